"""Shared by the federated tests: client mods, and a spy on what the server releases.

The mods go between SecAgg+ and the clipping mod (``make_client_app(extra_mods=...)``). They run
wherever the ClientApp runs (in Ray actor processes on Flower's simulation engine), so they
report through files, and they are module-level classes the actors can import.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.common import parameters_to_ndarrays
from flwr.compat.common.recorddict_compat import recorddict_to_fitres

from dpledger.federated.apps import DpFedAvgStrategy


def _is_train(msg):
    return msg.metadata.message_type == "train"


class RecordClipped:
    """Saves each client's clipped model, just before SecAgg+ masks it: DIR/<round>-<partition>.npz."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def __call__(self, msg, ctxt, call_next):
        out = call_next(msg, ctxt)
        if _is_train(msg) and not out.has_error():
            fitres = recorddict_to_fitres(out.content, keep_input=True)
            name = f"{msg.metadata.group_id}-{ctxt.node_config['partition-id']}.npz"
            np.savez(self.directory / name, *parameters_to_ndarrays(fitres.parameters))
        return out

    def load(self, server_round):
        """The clipped models of one round: {partition: [arrays]}."""
        models = {}
        for path in sorted(self.directory.glob(f"{server_round}-*.npz")):
            with np.load(path) as saved:
                models[int(path.stem.split("-")[1])] = [saved[k] for k in sorted(saved.files)]
        return models


class DropOut:
    """Client ``partition`` drops out of round r (it dies before sending its masked vector)."""

    def __init__(self, plan: dict[int, set[int]]) -> None:
        self.plan = plan  # round (1-based, Flower's group id) -> partitions that drop out

    def __call__(self, msg, ctxt, call_next):
        partition = int(ctxt.node_config["partition-id"])
        if _is_train(msg) and partition in self.plan.get(int(msg.metadata.group_id), ()):
            raise ConnectionError(f"client {partition} dropped out")
        return call_next(msg, ctxt)


class ServerSpy:
    """What the strategy receives (aggregate_fit) and releases (_apply), round by round."""

    def __init__(self, monkeypatch) -> None:
        self.received = []  # per aggregated round: the parameters of each result
        self.released = []  # per released round: (model before, sum, noise drawn, model after)
        spy = self
        aggregate, apply = DpFedAvgStrategy.aggregate_fit, DpFedAvgStrategy._apply

        def aggregate_fit(self, server_round, results, failures):
            spy.received.append([parameters_to_ndarrays(res.parameters) for _, res in results])
            return aggregate(self, server_round, results, failures)

        def _apply(self, total):
            before, noise, draws = [c.copy() for c in self.current], self._noise, []

            def recording(total):
                draws.extend(noise(total))
                return draws

            self._noise = recording
            try:
                apply(self, total)
            finally:
                del self._noise
            spy.released.append((before, [t.copy() for t in total], draws, self.current))

        monkeypatch.setattr(DpFedAvgStrategy, "aggregate_fit", aggregate_fit)
        monkeypatch.setattr(DpFedAvgStrategy, "_apply", _apply)


def flat(arrays):
    return np.concatenate([np.ravel(a) for a in arrays])


def check_round_of_survivors(received, released, clipped, *, survivors, m, step):
    """One SecAgg+ round after drop-outs: the strategy got only the survivors' sum, released /m.

    ``received``: the parameters of each result the strategy got; ``released``: (before, sum,
    noise, after) of that round; ``clipped``: {partition: clipped model} of the clients that
    trained; ``step``: SecAgg+'s quantization step s.
    """
    assert set(clipped) == survivors  # the drop-outs never sent a model
    assert len(received) == len(survivors)  # one result per survivor, all carrying the mean
    models = [flat(clipped[p]) for p in sorted(survivors)]
    before, total, noise, after = released
    for result in received:
        got = flat(result)
        assert not any(np.allclose(got, one, atol=1e-4) for one in models)
        # SecAgg+'s mean over the survivors: each rounded stochastically by less than s.
        np.testing.assert_allclose(got, np.mean(models, axis=0), rtol=0, atol=2 * step)
    expected_sum = np.sum([one - flat(before) for one in models], axis=0)
    np.testing.assert_allclose(flat(total), expected_sum, rtol=0, atol=2 * len(models) * step)
    # The release: (sum of survivors + noise) / m, m the number sampled, not the survivors.
    np.testing.assert_allclose(
        flat(after), flat(before) + (flat(total) + flat(noise)) / m, rtol=0, atol=1e-12
    )
