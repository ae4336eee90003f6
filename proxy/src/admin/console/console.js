// levee console: logs in with an admin token, polls GET /v1/status, pages GET /v1/audit,
// and asks for a reason before POST /v1/switchover or /v1/failback.
//
// The token is kept in this tab's sessionStorage only (never in the URL, never in
// localStorage) and sent as a bearer token on each call. Everything the server says goes
// into the page through textContent, so no server text is ever parsed as HTML.
'use strict';

(() => {
  const TOKEN_KEY = 'levee-admin-token';
  const POLL_MS = 3000;
  /** Data older than this is marked stale even without an error. */
  const STALE_MS = 10000;
  const CALL_TIMEOUT_MS = 8000;
  /** A planned switchover waits up to [admin] drain_timeout for the replica. */
  const SWITCH_TIMEOUT_MS = 180000;
  const AUDIT_PAGE = 20;

  const $ = (id) => document.getElementById(id);

  const state = {
    token: null,
    /** Bumped at each login and logout: answers to an older one are dropped. */
    generation: 0,
    lastOk: 0,
    lastError: null,
    epoch: null,
    active: null,
    pollTimer: null,
    tickTimer: null,
    inFlight: false,
    soon: false,
    auditBefore: null,
    auditSeq: 0,
    /** 'switchover' or 'failback' while the confirmation is open. */
    pending: null,
    busy: false,
  };

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  /** Calls the admin API; resolves to the JSON answer or rejects with an ApiError. */
  async function call(method, path, body, timeoutMs = CALL_TIMEOUT_MS) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeoutMs);
    const headers = { Authorization: `Bearer ${state.token}` };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    try {
      let response;
      try {
        response = await fetch(path, {
          method,
          headers,
          body: body === undefined ? undefined : JSON.stringify(body),
          signal: controller.signal,
          cache: 'no-store',
          credentials: 'omit',
          redirect: 'error',
        });
      } catch (err) {
        throw new ApiError(0, controller.signal.aborted
          ? `no answer from levee within ${timeoutMs / 1000} s`
          : 'levee is unreachable');
      }
      let data = null;
      try {
        data = await response.json();
      } catch (err) {
        data = null;
      }
      if (!response.ok) {
        const text = data && typeof data.error === 'string'
          ? data.error
          : (response.statusText || 'the request failed');
        let message = `${text} (HTTP ${response.status})`;
        const retry = response.headers.get('Retry-After');
        if (retry) message += `; try again in ${retry} s`;
        throw new ApiError(response.status, message);
      }
      return data;
    } finally {
      clearTimeout(timer);
    }
  }

  function show(id, visible) {
    $(id).hidden = !visible;
  }

  function setText(id, text, className) {
    const el = $(id);
    el.textContent = text;
    if (className !== undefined) el.className = className;
  }

  // ---- login and logout ----

  function showLoginError(text) {
    setText('login-error', text || '');
    show('login-error', Boolean(text));
  }

  async function login(event) {
    event.preventDefault();
    const token = $('token').value.trim();
    if (!token) return;
    $('login').disabled = true;
    showLoginError(null);
    state.token = token;
    const generation = ++state.generation;
    try {
      const status = await call('GET', '/v1/status');
      if (generation !== state.generation) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      $('token').value = '';
      enterConsole();
      render(status);
      updateFreshness();
    } catch (err) {
      if (generation !== state.generation) return;
      state.token = null;
      showLoginError(`Login refused: ${err.message}`);
    } finally {
      $('login').disabled = false;
    }
  }

  function enterConsole() {
    show('login-view', false);
    show('console-view', true);
    show('logout', true);
    schedulePoll(POLL_MS);
    clearInterval(state.tickTimer);
    state.tickTimer = setInterval(updateFreshness, 1000);
    loadAudit(true);
  }

  function logout(why) {
    state.generation++;
    clearTimeout(state.pollTimer);
    clearInterval(state.tickTimer);
    sessionStorage.removeItem(TOKEN_KEY);
    Object.assign(state, {
      token: null, lastOk: 0, lastError: null, epoch: null, active: null,
      inFlight: false, soon: false, auditBefore: null, pending: null, busy: false,
    });
    $('audit').replaceChildren();
    setText('node', '');
    show('confirm-box', false);
    show('message', false);
    show('console-view', false);
    show('logout', false);
    show('login-view', true);
    showLoginError(why || null);
    $('token').focus();
  }

  // ---- status ----

  function schedulePoll(delay) {
    clearTimeout(state.pollTimer);
    state.pollTimer = setTimeout(poll, delay);
  }

  async function poll() {
    const generation = state.generation;
    state.inFlight = true;
    try {
      const status = await call('GET', '/v1/status');
      if (generation !== state.generation) return;
      state.lastError = null;
      render(status);
    } catch (err) {
      if (generation !== state.generation) return;
      if (err.status === 401) {
        logout(`Logged out: ${err.message}`);
        return;
      }
      state.lastError = err.message;
    } finally {
      if (generation === state.generation) state.inFlight = false;
    }
    updateFreshness();
    schedulePoll(state.soon ? 0 : POLL_MS);
    state.soon = false;
  }

  /** Polls now, or right after the poll under way. */
  function refreshNow() {
    if (!state.token) return;
    if (state.inFlight) {
      state.soon = true;
    } else {
      schedulePoll(0);
    }
  }

  function updateFreshness() {
    const el = $('freshness');
    if (!state.lastOk) {
      el.textContent = state.lastError ? `Cannot reach levee: ${state.lastError}` : 'Loading…';
      el.classList.toggle('stale', Boolean(state.lastError));
      return;
    }
    const age = Math.max(0, Math.round((Date.now() - state.lastOk) / 1000));
    const stale = state.lastError !== null || Date.now() - state.lastOk > STALE_MS;
    el.classList.toggle('stale', stale);
    $('console-view').classList.toggle('stale-data', stale);
    if (state.lastError) {
      el.textContent = `Cannot reach levee: ${state.lastError}. Shown: data from ${age} s ago.`;
    } else if (stale) {
      el.textContent = `Stale: the last update was ${age} s ago.`;
    } else {
      el.textContent = `Live: updated ${age} s ago, every ${POLL_MS / 1000} s.`;
    }
  }

  function render(status) {
    state.lastOk = Date.now();
    setText('node', [status.node, status.role && `${status.role} site`].filter(Boolean).join(' · '));
    const failover = status.failover || null;
    if (failover && failover.active) {
      showActive(failover.active);
      const health = failover.health || {};
      setHealth('primary', health.primary_ok, health.primary_error);
      setHealth('replica', health.replica_ok, health.replica_error);
      setText('last-transition', health.last_transition
        ? `Last change${health.last_by_admin ? ' (by an admin)' : ' (automatic)'}: ${health.last_transition}`
        : 'No change of site since levee started.');
    } else {
      state.active = null;
      setText('active-site', status.role || 'primary', 'active-site primary');
      setText('epoch', '–');
      setHealth('primary', null, null);
      setHealth('replica', null, null);
      setText('last-transition', 'No replica site is configured: there is nothing to switch to.');
    }
    renderReplication(status);
    updateButtons();
  }

  /** Shows `active` ({backend, epoch}); a new epoch reloads the audit log. */
  function showActive(active) {
    const backend = active.backend === 'replica' ? 'replica' : 'primary';
    setText('active-site', String(active.backend), `active-site ${backend}`);
    setText('epoch', String(active.epoch));
    const changed = state.epoch !== null && state.epoch !== active.epoch;
    state.epoch = active.epoch;
    state.active = backend;
    if (changed) loadAudit(true);
    updateButtons();
  }

  function setHealth(site, ok, error) {
    const [text, className] = ok === true ? ['ok', 'ok']
      : ok === false ? ['down', 'down'] : ['unknown', 'unknown'];
    setText(`${site}-health`, text, `health ${className}`);
    setText(`${site}-error`, ok === false && error ? String(error) : '');
  }

  function renderReplication(status) {
    const repl = status.replication;
    if (repl) {
      setText('repl-connected', repl.connected ? 'connected' : 'disconnected',
        `health ${repl.connected ? 'ok' : 'down'}`);
      let lag = `${repl.lag_records} records`;
      if (typeof repl.lag_seconds === 'number') lag += `, ${repl.lag_seconds.toFixed(1)} s`;
      setText('repl-lag', lag);
      setText('repl-mode', repl.sync_degraded ? `${repl.mode} (degraded)` : String(repl.mode));
      setText('repl-error', repl.last_error ? `Last error: ${repl.last_error}` : '');
      show('repl-error', Boolean(repl.last_error));
    } else {
      setText('repl-connected', 'not configured', '');
      setText('repl-lag', '–');
      setText('repl-mode', '–');
      show('repl-error', false);
    }
    const head = status.journal_head ?? status.durable_seq;
    setText('journal-head', head === undefined ? '–' : `record ${head}`);
    setText('sessions', describeSessions(status.sessions));
  }

  /** "smtp 3 · imap 12" from {smtp: 3, imap: 12}; a number as is. */
  function describeSessions(sessions) {
    if (typeof sessions === 'number') return String(sessions);
    if (sessions && typeof sessions === 'object') {
      const parts = Object.entries(sessions).map(([proto, n]) => `${proto} ${n}`);
      return parts.length ? parts.join(' · ') : 'none';
    }
    return 'not reported';
  }

  // ---- switchover and failback ----

  function updateButtons() {
    $('switchover').disabled = state.busy || state.active !== 'primary';
    $('failback').disabled = state.busy || state.active !== 'replica';
    const stillMeaningful = (state.pending === 'switchover' && state.active === 'primary')
      || (state.pending === 'failback' && state.active === 'replica');
    if (state.pending && !state.busy && !stillMeaningful) {
      closeConfirm();
      showMessage('The active site changed meanwhile; nothing was asked of levee.', '');
    }
  }

  function showMessage(text, kind) {
    setText('message', text, `message ${kind}`);
    show('message', true);
  }

  function askSwitch(kind) {
    state.pending = kind;
    setText('confirm-what', kind === 'switchover'
      ? 'Make the replica site active. New mail is deferred for a moment while the replica catches up.'
      : 'Make the primary site active again.');
    $('reason').value = '';
    $('confirm').disabled = true;
    show('confirm-box', true);
    show('message', false);
    $('reason').focus();
  }

  function closeConfirm() {
    state.pending = null;
    show('confirm-box', false);
  }

  async function confirmSwitch(event) {
    event.preventDefault();
    const reason = $('reason').value.trim();
    const kind = state.pending;
    if (!reason || !kind || state.busy) return;
    const generation = state.generation;
    state.busy = true;
    $('confirm').disabled = true;
    updateButtons();
    showMessage(kind === 'switchover'
      ? 'Switching over: waiting until the replica holds every record…'
      : 'Failing back…', '');
    try {
      const answer = kind === 'switchover'
        ? await call('POST', '/v1/switchover', { to: 'replica', reason }, SWITCH_TIMEOUT_MS)
        : await call('POST', '/v1/failback', { reason }, SWITCH_TIMEOUT_MS);
      if (generation !== state.generation) return;
      state.busy = false;
      closeConfirm();
      showActive(answer.active);
      showMessage(`Done: the ${answer.active.backend} site is active now (epoch ${answer.active.epoch}).`, 'ok');
    } catch (err) {
      if (generation !== state.generation) return;
      state.busy = false;
      closeConfirm();
      if (err.status === 401) {
        logout(`Logged out: ${err.message}`);
        return;
      }
      showMessage(`Refused: ${err.message}`, 'error');
    }
    updateButtons();
    refreshNow();
    loadAudit(true);
  }

  // ---- audit log ----

  async function loadAudit(fresh) {
    const generation = state.generation;
    const seq = ++state.auditSeq;
    const before = fresh ? null : state.auditBefore;
    let path = `/v1/audit?limit=${AUDIT_PAGE}`;
    if (before !== null) path += `&before=${encodeURIComponent(before)}`;
    $('audit-more').disabled = true;
    try {
      const page = await call('GET', path);
      if (generation !== state.generation || seq !== state.auditSeq) return;
      const list = $('audit');
      if (fresh) list.replaceChildren();
      for (const record of page.records || []) list.append(auditItem(record));
      if (!list.children.length) {
        const empty = document.createElement('li');
        empty.textContent = 'No audit records yet.';
        list.append(empty);
      }
      state.auditBefore = page.next_before ?? null;
      show('audit-more', state.auditBefore !== null);
      show('audit-error', false);
    } catch (err) {
      if (generation !== state.generation) return;
      if (err.status === 401) {
        logout(`Logged out: ${err.message}`);
        return;
      }
      setText('audit-error', `The audit log could not be read: ${err.message}`);
      show('audit-error', true);
    } finally {
      $('audit-more').disabled = false;
    }
  }

  function auditItem(record) {
    const li = document.createElement('li');
    const action = String(record.action);
    li.dataset.action = action;
    li.dataset.seq = String(record.seq);
    if (action === 'failover') li.className = 'switch';
    else if (action.endsWith('-refused')) li.className = 'refused';
    const part = (className, text) => {
      const span = document.createElement('span');
      span.className = className;
      span.textContent = text;
      li.append(span);
    };
    const time = record.time ? String(record.time).replace('T', ' ').replace(/\.\d+/, '') : '';
    part('when', `${time} · #${record.seq}`);
    part('action', action);
    part('actor', String(record.actor));
    part('detail', String(record.detail));
    return li;
  }

  // ---- wiring ----

  function start() {
    $('login-form').addEventListener('submit', login);
    $('logout').addEventListener('click', () => logout(null));
    $('switchover').addEventListener('click', () => askSwitch('switchover'));
    $('failback').addEventListener('click', () => askSwitch('failback'));
    $('cancel').addEventListener('click', closeConfirm);
    $('confirm-box').addEventListener('submit', confirmSwitch);
    $('reason').addEventListener('input', () => {
      $('confirm').disabled = state.busy || !$('reason').value.trim();
    });
    $('audit-more').addEventListener('click', () => loadAudit(false));
    $('audit-refresh').addEventListener('click', () => loadAudit(true));
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible') refreshNow();
    });
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) {
      state.token = saved;
      state.generation++;
      enterConsole();
      schedulePoll(0);
    } else {
      show('login-view', true);
      $('token').focus();
    }
  }

  start();
})();
