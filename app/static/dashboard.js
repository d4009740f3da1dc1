// Draws every <canvas data-chart="ID"> from the JSON in <script type="application/json" id="ID">.
// The server computes every number; this file only maps series roles to colours.
(function () {
  "use strict";
  var COLOURS = {
    primary: { line: "#b4442a", fill: "rgba(180, 68, 42, 0.12)", dash: [] },
    secondary: { line: "#2a6fb4", fill: "rgba(42, 111, 180, 0.08)", dash: [6, 4] },
    limit: { line: "#6b6b6b", fill: "transparent", dash: [2, 3] }
  };

  function dataset(series) {
    var colour = COLOURS[series.role] || COLOURS.secondary;
    return {
      label: series.label,
      data: series.data,
      borderColor: colour.line,
      backgroundColor: colour.fill,
      borderDash: colour.dash,
      borderWidth: series.role === "limit" ? 1.5 : 2,
      pointRadius: series.role === "limit" || series.data.length > 60 ? 0 : 2.5,
      spanGaps: false,
      tension: 0
    };
  }

  function draw(canvas) {
    var source = document.getElementById(canvas.getAttribute("data-chart"));
    if (!source || typeof window.Chart === "undefined") {
      return null;
    }
    var spec = JSON.parse(source.textContent);
    var chart = new window.Chart(canvas, {
      type: spec.type,
      data: { labels: spec.labels, datasets: spec.datasets.map(dataset) },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        interaction: { mode: "index", intersect: false },
        scales: {
          x: { title: { display: true, text: spec.x_title }, ticks: { maxTicksLimit: 8, maxRotation: 0 } },
          y: spec.y_scale === "logarithmic"
            ? { type: "logarithmic", title: { display: true, text: spec.y_title } }
            : { title: { display: true, text: spec.y_title }, beginAtZero: true }
        },
        plugins: { legend: { position: "bottom" } }
      }
    });
    canvas.setAttribute("data-rendered", "true");
    return chart;
  }

  function drawAll() {
    var charts = [];
    document.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      var chart = draw(canvas);
      if (chart) {
        charts.push(chart);
      }
    });
    window.dpledgerCharts = charts;
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", drawAll);
  } else {
    drawAll();
  }
})();
