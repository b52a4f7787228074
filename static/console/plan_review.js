// The plan panel answers a refused action with 400 (findings) or 409 (wrong state) and the panel
// itself, naming what was refused; htmx does not swap error responses by default, so let it here.
document.body.addEventListener("htmx:beforeSwap", function (evt) {
  var status = evt.detail.xhr.status;
  if ((status === 400 || status === 409) && evt.detail.target && evt.detail.target.id === "session-plan") {
    evt.detail.shouldSwap = true;
    evt.detail.isError = false;
  }
});
