// Starts ReDoc on /redoc (an external file: the page's CSP allows no inline script).
window.addEventListener("DOMContentLoaded", function () {
  Redoc.init(document.body.dataset.openapiUrl, {}, document.getElementById("redoc"));
});
