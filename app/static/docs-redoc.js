// Starts ReDoc on /redoc (an external file: the page's CSP allows no inline script).
window.addEventListener("DOMContentLoaded", function () {
  // Search runs in a blob: web worker, which the CSP (scripts from this origin only) forbids.
  // Its styles go into <style> elements carrying the page's CSP nonce (style-src 'nonce-...').
  var options = { disableSearch: true, nonce: document.body.dataset.styleNonce };
  Redoc.init(document.body.dataset.openapiUrl, options, document.getElementById("redoc"));
});
