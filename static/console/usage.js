// Refresh the usage meters every few seconds from /console/usage.json.
(function () {
  "use strict";
  var container = document.getElementById("meters");
  if (!container || !window.fetch) return;
  var units = ["bytes", "KB", "MB", "GB", "TB"];
  function bytes(value) {
    var size = value, i = 0;
    while (size >= 1024 && i < units.length - 1) { size /= 1024; i++; }
    return i === 0 ? size + " bytes" : size.toFixed(1) + " " + units[i];
  }
  function show(meter) {
    var el = container.querySelector('[data-counter="' + meter.counter + '"]');
    if (!el) return;
    el.querySelector(".current").textContent = meter.is_bytes ? bytes(meter.current) : meter.current.toLocaleString("en-US");
    var fill = el.querySelector(".fill");
    fill.style.width = meter.bar + "%";
    fill.className = "fill " + meter.state;
    el.querySelector(".percentage").textContent = meter.percentage === null ? "" : meter.percentage + "%";
  }
  function refresh() {
    fetch(container.dataset.url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) { if (data) data.meters.forEach(show); })
      .catch(function () {});
  }
  setInterval(refresh, 5000);
})();
