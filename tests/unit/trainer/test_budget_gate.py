from dp_core.mechanisms import SampledGaussianSchedule
from dp_core.schedules import NoiseSchedule
from dp_core.trainer.budget_gate import BudgetGate, LocalBudgetGate, RunPlan

PLAN = RunPlan(
    sample_rate=0.1,
    steps_per_epoch=10,
    epochs=3,
    schedule=NoiseSchedule(kind="exponential", noise_multiplier=1.2, decay_rate=0.01),
    max_grad_norm=1.5,
    delta=1e-5,
    name="test-run",
)


def test_the_local_gate_satisfies_the_protocol():
    # The service's gate (dpledger.gate.HttpBudgetGate) is tested in tests/unit/dpledger.
    assert isinstance(LocalBudgetGate(target_epsilon=1.0, delta=1e-5), BudgetGate)


def test_plan_mechanism_per_epoch_uses_global_steps():
    assert PLAN.epoch_mechanism(2) == SampledGaussianSchedule(
        sample_rate=0.1, schedule=PLAN.schedule, steps=10, start_step=20
    )
    assert RunPlan.from_dict(PLAN.to_dict()) == PLAN
