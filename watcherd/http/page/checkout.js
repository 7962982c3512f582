// watcherd payment page: progressive enhancement of a page that works without it (see <noscript>).
// Live status: Server-Sent Events from <id>/live (the public invoice JSON, only when it changed), falling back to
// polling <id>/status; on a change the page's own HTML is fetched again and <main> swapped, so every state is
// rendered by one renderer, on the server.
(() => {
  'use strict';
  const FINAL = new Set(['paid', 'cancelled', 'invalid']);  // as FINAL_STATUSES in public.py
  const POLL_MS = 5000;
  let source = null;
  let pollTimer = null;
  let polling = false;
  let refreshing = null;
  let again = false;
  let errors = 0;

  const main = () => document.getElementById('checkout');

  // Inside a shop's overlay (BTCPay's modal script, ?view=modal): tell it the page loaded, the invoice's
  // Greenfield status each time it changes, and a click on Close; it answers nothing back.
  const framed = window.parent !== window;
  let toldStatus = null;

  function tellShop(message) {
    if (framed) window.parent.postMessage(message, '*');
  }

  function tellStatus() {
    const here = main();
    const status = here && here.dataset.modalStatus;
    if (!status || status === toldStatus) return;
    toldStatus = status;
    tellShop({ invoiceId: here.dataset.id, status });
  }

  function reveal() {
    for (const button of document.querySelectorAll('button[data-copy][hidden]')) button.hidden = false;
    if (framed) for (const button of document.querySelectorAll('button[data-close][hidden]')) button.hidden = false;
  }

  function announce(text) {
    const status = document.getElementById('copy-status');
    if (status) status.textContent = text;
  }

  async function copy(button) {
    const field = document.getElementById(button.dataset.copy);
    if (!field) return;
    const text = field.textContent.trim();
    let done = false;
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(text);
        done = true;
      }
    } catch (e) { done = false; }
    if (!done) {
      const range = document.createRange();
      range.selectNodeContents(field);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      try { done = document.execCommand('copy'); } catch (e) { done = false; }
    }
    const label = button.textContent;
    const message = done ? document.body.dataset.copied : document.body.dataset.copyFailed;
    announce(message);
    if (done) {
      button.textContent = message;
      setTimeout(() => { button.textContent = label; }, 1500);
    }
  }

  function countdown() {
    for (const time of document.querySelectorAll('time[data-countdown]')) {
      const left = Math.max(0, Math.floor((Date.parse(time.getAttribute('datetime')) - Date.now()) / 1000));
      const h = Math.floor(left / 3600);
      const m = Math.floor((left % 3600) / 60);
      const s = String(left % 60).padStart(2, '0');
      time.textContent = h ? `${h}:${String(m).padStart(2, '0')}:${s}` : `${m}:${s}`;
    }
  }

  function isFinal(text) {
    try { return FINAL.has(JSON.parse(text).status); } catch (e) { return false; }
  }

  // Fetch the page again and swap <main>, keeping the focus on the same control when it still exists.
  async function refresh() {
    if (refreshing) { again = true; return refreshing; }
    refreshing = (async () => {
      do {
        again = false;
        const response = await fetch(location.href, { headers: { Accept: 'text/html' }, cache: 'no-store' });
        if (!response.ok) break;
        const next = new DOMParser().parseFromString(await response.text(), 'text/html');
        const fresh = next.getElementById('checkout');
        const current = main();
        if (!fresh || !current) break;
        const focused = document.activeElement && current.contains(document.activeElement)
          ? focusKey(document.activeElement) : null;
        current.replaceWith(fresh);
        document.title = next.title;
        reveal();
        countdown();
        tellStatus();
        if (focused) restoreFocus(focused);
      } while (again);
    })().catch(() => {}).finally(() => { refreshing = null; });
    return refreshing;
  }

  function focusKey(element) {
    if (element.id) return `#${element.id}`;
    if (element.dataset.copy) return `button[data-copy="${element.dataset.copy}"]`;
    const form = element.closest('form');
    if (form) return `form[action="${form.getAttribute('action')}"] button`;
    return null;
  }

  function restoreFocus(selector) {
    const element = document.querySelector(selector);
    if (element) element.focus();
  }

  function stop() {
    if (source) { source.close(); source = null; }
    polling = false;
    clearTimeout(pollTimer);
  }

  function changed(text) {
    refresh();
    if (isFinal(text)) stop();
  }

  function poll() {
    const here = main();
    if (!polling || !here) return;
    fetch(here.dataset.status, { headers: { 'If-None-Match': `"${here.dataset.version}"` }, cache: 'no-store' })
      .then(async (response) => { if (response.status === 200) changed(await response.text()); })
      .catch(() => {})
      .finally(() => { if (polling) pollTimer = setTimeout(poll, POLL_MS); });
  }

  function startPolling() {
    if (source) { source.close(); source = null; }
    if (!polling) { polling = true; pollTimer = setTimeout(poll, POLL_MS); }
  }

  function live() {
    const here = main();
    if (!here || here.dataset.final === '1' || !here.dataset.live) return;
    if (!('EventSource' in window)) { startPolling(); return; }
    source = new EventSource(`${here.dataset.live}?v=${encodeURIComponent(here.dataset.version)}`);
    source.onopen = () => { errors = 0; };
    source.onmessage = (event) => { errors = 0; changed(event.data); };
    source.onerror = () => {
      // the browser reconnects by itself (sending Last-Event-ID); a stream that keeps failing is polled instead
      errors += 1;
      if (source && (source.readyState === EventSource.CLOSED || errors >= 3)) startPolling();
    };
  }

  // Choosing a coin without leaving the page; on any failure the form posts the ordinary way.
  async function activate(form, event) {
    event.preventDefault();
    const button = form.querySelector('button');
    if (button) button.disabled = true;
    try {
      const response = await fetch(form.action, { method: 'POST', headers: { Accept: 'application/json' } });
      if (!response.ok) throw new Error(String(response.status));
      const method = decodeURIComponent(new URL(form.action).pathname.split('/methods/')[1] || '');
      const url = new URL(location.href);
      url.searchParams.set('method', method);
      history.replaceState(null, '', url);
      await refresh();
      const pay = document.getElementById('pay-title');
      if (pay) { pay.tabIndex = -1; pay.focus(); }
    } catch (e) {
      form.submit();
    }
  }

  document.addEventListener('click', (event) => {
    const button = event.target.closest('button[data-copy]');
    if (button) copy(button);
    if (event.target.closest('button[data-close]')) tellShop('close');
  });
  document.addEventListener('submit', (event) => {
    const form = event.target.closest('form.activate');
    if (form) activate(form, event);
  });
  reveal();
  countdown();
  setInterval(countdown, 1000);
  live();
  tellShop('loaded');
  tellStatus();
})();
