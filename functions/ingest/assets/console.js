// jetrun console: live updates for server-rendered pages. Written for jetrun (no
// library). Pages work without it; with it:
// - #live[data-live-src]: an EventSource on that URL; each event re-renders the
//   region from the server (GET the same page with X-Jetrun-Partial: live), debounced;
// - #log[data-log-src][data-follow=true]: polled every second until the job is terminal;
// - form[data-confirm]: asks before submitting.
(function () {
  'use strict';

  var state = document.getElementById('live-state');
  function say(text) { if (state) { state.textContent = text; } }

  var live = document.getElementById('live');
  var timer = null;
  var inFlight = false;
  var again = false;

  function refresh() {
    if (inFlight) { again = true; return; }
    inFlight = true;
    fetch(window.location.href, {
      headers: { 'X-Jetrun-Partial': 'live' },
      credentials: 'same-origin',
      cache: 'no-store'
    }).then(function (r) {
      if (r.status === 401) { window.location.assign('/ui/login'); return null; }
      return r.ok ? r.text() : null;
    }).then(function (html) {
      if (html !== null && html !== undefined && live.innerHTML !== html) {
        live.innerHTML = html;
        bindConfirms(live);
        document.dispatchEvent(new CustomEvent('jetrun:refreshed'));
      }
    }).catch(function () { /* the next event retries */ })
      .then(function () {
        inFlight = false;
        if (again) { again = false; schedule(); }
      });
  }

  function schedule() {
    if (timer) { return; }
    timer = window.setTimeout(function () { timer = null; refresh(); }, 200);
  }

  if (live && live.getAttribute('data-live-src') && window.EventSource) {
    var es = new EventSource(live.getAttribute('data-live-src'));
    es.onopen = function () { say('live'); };
    es.onmessage = function () { schedule(); };
    es.onerror = function () {
      // A job's stream ends after its terminal change (and a reconnect gets 204).
      var finished = es.readyState === EventSource.CLOSED ||
        !!document.querySelector('#live [data-terminal="true"]');
      say(finished ? '' : 'reconnecting…');
    };
    window.addEventListener('pagehide', function () { es.close(); });
  }

  // Following a job's log.
  var log = document.getElementById('log');
  function terminal() {
    return !!document.querySelector('#live [data-terminal="true"]');
  }
  if (log && log.getAttribute('data-log-src')) {
    var src = log.getAttribute('data-log-src');
    var following = log.getAttribute('data-follow') === 'true';
    var poll = function () {
      var last = terminal();
      fetch(src, { credentials: 'same-origin', cache: 'no-store' })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (t) {
          if (t !== null && t !== log.textContent) {
            var atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
            log.textContent = t;
            if (atEnd) { log.scrollTop = log.scrollHeight; }
          }
        })
        .catch(function () {})
        .then(function () {
          if (last) { log.setAttribute('data-follow', 'false'); return; }
          window.setTimeout(poll, 1000);
        });
    };
    if (following) { window.setTimeout(poll, 500); }
  }

  function bindConfirms(root) {
    var forms = root.querySelectorAll('form[data-confirm]');
    for (var i = 0; i < forms.length; i++) {
      forms[i].addEventListener('submit', function (ev) {
        var msg = ev.currentTarget.getAttribute('data-confirm');
        if (msg && !window.confirm(msg)) { ev.preventDefault(); }
      });
    }
  }
  bindConfirms(document);
}());
