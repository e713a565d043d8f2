// Front-channel logout (OpenID Connect Front-Channel Logout 1.0): wait until every hidden
// application frame below has loaded, or until the page's time limit, then go on to the
// application's post-logout page, or say that signing out is complete. Loaded before the
// frames, so a capturing listener sees each frame's load event (which does not bubble).
(function () {
  "use strict";
  var box = document.getElementById("frontchannel-logout");
  if (!box) { return; }
  var next = box.getAttribute("data-next");
  var left = parseInt(box.getAttribute("data-frames"), 10) || 0;
  var finished = false;

  function finish() {
    if (finished) { return; }
    finished = true;
    if (next) {
      window.location.replace(next);
      return;
    }
    var status = document.getElementById("frontchannel-status");
    if (status) { status.textContent = status.getAttribute("data-done"); }
  }

  function frameDone(event) {
    if (event.target && event.target.tagName === "IFRAME") {
      left -= 1;
      if (left <= 0) { finish(); }
    }
  }

  document.addEventListener("load", frameDone, true);
  document.addEventListener("error", frameDone, true);
  window.setTimeout(finish, parseInt(box.getAttribute("data-wait"), 10) || 3000);
  if (left <= 0) { finish(); }
}());
