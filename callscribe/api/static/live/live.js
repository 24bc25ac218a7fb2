// The live page: sign in with an API key (exchanged for an HttpOnly session cookie, so the key
// never stays in the page), then watch the tenant's live calls on the live event stream.
// Every text from the server is put in the page as text (textContent), never as markup.
//
// Where the stream is comes from /live/config: local mode's own stream, opened with the
// session cookie, which sends a snapshot first; or (AWS) the deployment's WebSocket API on
// another origin, opened with a short-lived token the session gets from /live/session/token,
// which sends none: the page then takes it from /live/calls once connected.

const EVENTS_PATH = "/callscribe/v1/live/events";
const SESSION_PATH = "/live/session";
const SESSION_TOKEN_PATH = "/live/session/token";
const CONFIG_PATH = "/live/config";
const CALLS_PATH = "/live/calls";
const ROLES = [
  ["customer", "Customer"],
  ["agent", "Agent"],
];
// Close codes the server uses (see callscribe/api/live.py).
const CLOSE_FELL_BEHIND = 1013;
const CLOSE_SESSION_EXPIRED = 4401;
const MAX_RECONNECT_DELAY_MS = 15000;

const $ = (id) => document.getElementById(id);

const view = {
  signIn: $("sign-in"),
  form: $("sign-in-form"),
  apiId: $("api-id"),
  apiSecret: $("api-secret"),
  signInButton: $("sign-in-button"),
  signInError: $("sign-in-error"),
  account: $("account"),
  signedInAs: $("signed-in-as"),
  signOut: $("sign-out"),
  callsView: $("calls-view"),
  callsHeading: $("calls-heading"),
  connection: $("connection"),
  noCalls: $("no-calls"),
  calls: $("calls"),
};

// The filter of the page's own URL (/live?guid=…&namespace=…) is the stream's.
const pageQuery = new URLSearchParams(window.location.search);
const streamFilter = new URLSearchParams();
for (const name of ["guid", "namespace"]) {
  if (pageQuery.get(name)) streamFilter.set(name, pageQuery.get(name));
}

let socket = null;
// Counts the streams asked for: an answer (a token) for one since replaced is dropped.
let streamAttempt = 0;
// What this connection's events said of calls before the snapshot from /live/calls came:
// "namespace/guid" -> "live" or "ended" (the snapshot may be older than they are).
let heardSinceOpen = new Map();
let sessionTimer = null;
let signedIn = false;
let reconnectDelayMs = 1000;
let reconnectTimer = null;
let callCount = 0;
// "namespace/guid" -> the call's state on the page.
const calls = new Map();

// Sign in and out ------------------------------------------------------------------------

function showSignIn(message) {
  signedIn = false;
  clearSessionTimer();
  stopStream();
  view.callsView.hidden = true;
  view.account.hidden = true;
  view.signIn.hidden = false;
  view.signInError.textContent = message || "";
  view.apiId.focus();
}

function showCalls(session, moveFocus) {
  signedIn = true;
  view.signIn.hidden = true;
  view.callsView.hidden = false;
  view.account.hidden = false;
  view.signedInAs.textContent = `Tenant ${session.tenant}`;
  if (moveFocus) view.callsHeading.focus();
  clearSessionTimer();
  if (config.streamAuth === "token" && session.expiresAt) {
    // The WebSocket API checks the token once, when the stream opens: the page itself
    // ends the stream when its session ends (local mode's server closes it, 4401).
    const left = Math.max(0, Date.parse(session.expiresAt) - Date.now());
    sessionTimer = setTimeout(() => {
      sessionTimer = null;
      if (signedIn) showSignIn("Your session has ended: sign in again.");
    }, left);
  }
  openStream();
}

function clearSessionTimer() {
  if (sessionTimer !== null) {
    clearTimeout(sessionTimer);
    sessionTimer = null;
  }
}

async function loadConfig() {
  const local = {
    eventsUrl: `${window.location.protocol === "https:" ? "wss" : "ws"}://${window.location.host}${EVENTS_PATH}`,
    streamAuth: "session",
    streamSendsSnapshot: true,
  };
  try {
    const response = await fetch(CONFIG_PATH, { credentials: "same-origin" });
    if (response.ok) return { ...local, ...(await response.json()) };
  } catch (error) {
    // Unreachable: the stream on this server, as before /live/config was asked.
  }
  return local;
}

async function checkSession() {
  try {
    const response = await fetch(SESSION_PATH, { credentials: "same-origin" });
    if (response.ok) {
      const session = await response.json();
      if (session.signedIn) return session;
    }
  } catch (error) {
    // Unreachable server: treated as signed out; signing in says what is wrong.
  }
  return null;
}

view.form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const apiId = view.apiId.value.trim();
  const apiSecret = view.apiSecret.value;
  if (!apiId || !apiSecret) {
    view.signInError.textContent = "Enter both the API id and the API secret.";
    (apiId ? view.apiSecret : view.apiId).focus();
    return;
  }
  view.signInButton.disabled = true;
  view.signInError.textContent = "";
  try {
    const response = await fetch(SESSION_PATH, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ apiId, apiSecret }),
    });
    if (response.ok) {
      view.form.reset(); // the secret does not stay in the page
      showCalls(await response.json(), true);
      return;
    }
    view.signInError.textContent =
      response.status === 401
        ? "That API id and secret were not accepted."
        : `Signing in failed (HTTP ${response.status}).`;
  } catch (error) {
    view.signInError.textContent = "The server could not be reached.";
  } finally {
    view.signInButton.disabled = false;
  }
  view.apiSecret.focus();
});

view.signOut.addEventListener("click", async () => {
  stopStream();
  try {
    await fetch(SESSION_PATH, { method: "DELETE", credentials: "same-origin" });
  } catch (error) {
    // The cookie expires by itself; the page is signed out either way.
  }
  clearCalls();
  showSignIn("You are signed out.");
});

// The event stream -----------------------------------------------------------------------

function setConnection(text) {
  view.connection.textContent = text;
}

// The stream's URL with the page's filter (and the token, when it came with one).
function withFilter(url) {
  const made = new URL(url);
  for (const [name, value] of streamFilter) made.searchParams.set(name, value);
  return made.toString();
}

// A token for the stream, for this session: null when the session is gone; undefined when
// the server could not be asked (the stream is tried again later).
async function streamToken() {
  try {
    const response = await fetch(SESSION_TOKEN_PATH, { method: "POST", credentials: "same-origin" });
    if (response.ok) return await response.json();
    if (response.status === 401) return null;
  } catch (error) {
    // fall through: unreachable
  }
  return undefined;
}

async function openStream() {
  stopStream();
  const attempt = streamAttempt;
  setConnection("Connecting…");
  let url = withFilter(config.eventsUrl);
  if (config.streamAuth === "token") {
    const pass = await streamToken();
    if (attempt !== streamAttempt || !signedIn) return; // stopped or replaced meanwhile
    if (pass === null) {
      showSignIn("Your session has ended: sign in again.");
      return;
    }
    if (pass === undefined) {
      streamClosed(1006);
      return;
    }
    url = withFilter(pass.eventsUrl);
  }
  const opened = new WebSocket(url);
  socket = opened;
  opened.addEventListener("open", () => {
    reconnectDelayMs = 1000;
    heardSinceOpen = new Map();
    if (!config.streamSendsSnapshot) loadSnapshot(opened);
    setConnection(
      streamFilter.get("guid")
        ? `Connected: showing call ${streamFilter.get("guid")} only.`
        : "Connected: showing every live call of your tenant.",
    );
  });
  opened.addEventListener("message", (event) => {
    if (socket === opened) handleEvent(JSON.parse(event.data));
  });
  opened.addEventListener("close", (event) => {
    if (socket === opened) {
      socket = null;
      streamClosed(event.code);
    }
  });
}

// The live calls so far, for a stream that does not send them (AWS): asked once the stream is
// open, so no event falls between the two; one that came meanwhile counts over the snapshot.
async function loadSnapshot(opened) {
  const query = streamFilter.toString();
  try {
    const response = await fetch(`${CALLS_PATH}${query ? `?${query}` : ""}`, {
      credentials: "same-origin",
    });
    if (!response.ok || socket !== opened) return;
    const snapshot = await response.json();
    if (socket === opened) applySnapshot(snapshot.calls, heardSinceOpen);
  } catch (error) {
    // The stream's events still come; the next connection asks again.
  }
}

function stopStream() {
  streamAttempt += 1;
  if (reconnectTimer !== null) {
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
  }
  if (socket !== null) {
    const closing = socket;
    socket = null;
    closing.close(1000);
  }
}

async function streamClosed(code) {
  if (!signedIn) return;
  if (code === CLOSE_SESSION_EXPIRED) {
    showSignIn("Your session has ended: sign in again.");
    return;
  }
  // The handshake's refusal (a session that ran out) shows as an abnormal close: ask.
  if (code !== CLOSE_FELL_BEHIND && (await checkSession()) === null) {
    showSignIn("Your session has ended: sign in again.");
    return;
  }
  const seconds = Math.round(reconnectDelayMs / 1000);
  setConnection(
    code === CLOSE_FELL_BEHIND
      ? `This page fell behind the calls; reconnecting in ${seconds} s…`
      : `Disconnected; reconnecting in ${seconds} s…`,
  );
  reconnectTimer = setTimeout(() => {
    reconnectTimer = null;
    if (signedIn) openStream();
  }, reconnectDelayMs);
  reconnectDelayMs = Math.min(reconnectDelayMs * 2, MAX_RECONNECT_DELAY_MS);
}

function handleEvent(event) {
  if (event.namespace !== undefined && event.type !== "snapshot") {
    const key = `${event.namespace}/${event.guid}`;
    if (event.type === "callEnded") heardSinceOpen.set(key, "ended");
    else if (heardSinceOpen.get(key) !== "ended") heardSinceOpen.set(key, "live");
  }
  switch (event.type) {
    case "snapshot":
      applySnapshot(event.calls);
      break;
    case "callStarted":
      callFor(event.namespace, event.guid, event.startedAt);
      break;
    case "callEnded":
      endCall(event.namespace, event.guid);
      break;
    case "interim":
      showInterim(event);
      break;
    case "final":
      showFinal(event);
      break;
    default:
      break; // a kind of event this page does not know yet
  }
}

// ``heard``: what the stream said of calls since it opened, which the snapshot may predate.
function applySnapshot(liveCalls, heard = new Map()) {
  const live = new Set();
  for (const call of liveCalls) {
    const key = `${call.namespace}/${call.guid}`;
    live.add(key);
    if (heard.get(key) === "ended") continue; // it ended after the snapshot was taken
    callFor(call.namespace, call.guid, call.startedAt);
    for (const final of call.finals) showFinal(final);
  }
  // Calls that ended while the page was not connected (not those the stream just named).
  for (const [key, call] of calls) {
    if (!live.has(key) && !call.ended && !heard.has(key)) endCall(call.namespace, call.guid);
  }
}

// Calls and their transcripts ------------------------------------------------------------

function element(tag, className, text) {
  const made = document.createElement(tag);
  if (className) made.className = className;
  if (text !== undefined) made.textContent = text;
  return made;
}

function clock(ms) {
  const seconds = Math.max(0, Math.floor(ms / 1000));
  const minutes = Math.floor(seconds / 60);
  return `${String(minutes).padStart(2, "0")}:${String(seconds % 60).padStart(2, "0")}`;
}

function callFor(namespace, guid, startedAt) {
  const key = `${namespace}/${guid}`;
  let call = calls.get(key);
  if (call) {
    if (call.ended && startedAt) reopenCall(call);
    return call;
  }
  callCount += 1;
  const id = `call-${callCount}`;
  const article = element("article", "call");
  article.dataset.namespace = namespace;
  article.dataset.guid = guid;
  article.setAttribute("aria-labelledby", `${id}-title`);

  const header = element("header", "call-header");
  const title = element("h3", "call-title");
  title.id = `${id}-title`;
  title.append("Call ", element("span", "guid", guid));
  const meta = element("p", "call-meta");
  const started = startedAt ? new Date(startedAt).toLocaleTimeString() : "";
  const status = element("span", "call-status live", "Live");
  meta.append(`${namespace}${started ? ` · started ${started}` : ""} · `, status);
  const remove = element("button", "remove", "Remove");
  remove.type = "button";
  remove.hidden = true;
  remove.setAttribute("aria-label", `Remove ended call ${guid}`);
  remove.addEventListener("click", () => {
    calls.delete(key);
    article.remove();
    updateEmpty();
    view.callsHeading.focus();
  });
  header.append(title, meta, remove);

  const parties = element("div", "parties");
  const logs = {};
  for (const [role, label] of ROLES) {
    const party = element("section", "party");
    const heading = element("h4", "party-heading", label);
    heading.id = `${id}-${role}`;
    party.setAttribute("aria-labelledby", heading.id);
    // A log: new lines are announced politely; an interim line's changing text is not (it
    // is replaced by its final line, which is).
    const log = element("div", "transcript");
    log.dataset.role = role;
    log.setAttribute("role", "log");
    log.setAttribute("aria-live", "polite");
    log.setAttribute("aria-relevant", "additions");
    log.setAttribute("aria-labelledby", heading.id);
    log.tabIndex = 0; // scrollable from the keyboard
    party.append(heading, log);
    parties.append(party);
    logs[role] = log;
  }
  article.append(header, parties);
  view.calls.prepend(article);
  call = { namespace, guid, article, status, remove, logs, ended: false, messages: new Set() };
  calls.set(key, call);
  updateEmpty();
  return call;
}

function reopenCall(call) {
  call.ended = false;
  call.article.classList.remove("ended");
  call.status.textContent = "Live";
  call.status.className = "call-status live";
  call.remove.hidden = true;
}

function endCall(namespace, guid) {
  const call = calls.get(`${namespace}/${guid}`);
  if (!call || call.ended) return;
  call.ended = true;
  call.article.classList.add("ended");
  call.status.textContent = "Ended";
  call.status.className = "call-status ended";
  call.remove.hidden = false;
  for (const line of call.article.querySelectorAll(".line.interim")) line.remove();
}

function clearCalls() {
  calls.clear();
  view.calls.replaceChildren();
  updateEmpty();
}

function updateEmpty() {
  view.noCalls.hidden = calls.size > 0;
}

function logFor(call, role) {
  return call.logs[role] || call.logs.customer;
}

// Keeps a log scrolled to its newest line, unless the reader scrolled up to read.
function appendInOrder(log, line, start) {
  const following = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  const later = [...log.children].find((other) => Number(other.dataset.start) > start);
  log.insertBefore(line, later || null);
  if (following) log.scrollTop = log.scrollHeight;
}

function showInterim(event) {
  const call = callFor(event.namespace, event.guid);
  if (call.ended) return;
  const log = logFor(call, event.role);
  // The server sends no interim after its final; a final already shown wins regardless.
  if (log.querySelector(`.line.final[data-utterance="${CSS.escape(event.utteranceId)}"]`)) return;
  let line = log.querySelector(`.line.interim[data-utterance="${CSS.escape(event.utteranceId)}"]`);
  const stable = event.text.slice(0, event.stablePrefix);
  const changing = event.text.slice(event.stablePrefix);
  const text = element("span", "text");
  text.append(element("span", "stable", stable), element("span", "changing", changing));
  if (line) {
    line.querySelector(".text").replaceWith(text);
    return;
  }
  line = element("p", "line interim");
  line.dataset.utterance = event.utteranceId;
  line.dataset.start = String(event.start);
  line.append(
    element("span", "time", clock(event.start)),
    " ",
    element("span", "visually-hidden", "still speaking: "),
    text,
  );
  appendInOrder(log, line, event.start);
}

function showFinal(event) {
  const call = callFor(event.namespace, event.guid);
  if (call.messages.has(event.messageId)) return; // already shown (a snapshot after a reconnect)
  call.messages.add(event.messageId);
  const message = event.message;
  const role = message.sender.role;
  const { start, end } = message.autotranscribeResponse;
  const log = logFor(call, role);
  // The interim lines this final replaces: its own utterance's (the same utteranceId), and
  // any the speaker began before it ended, whose utterance is over without a final of its
  // own (the recogniser heard no words in it in the end).
  for (const interim of log.querySelectorAll(".line.interim")) {
    if (interim.dataset.utterance === event.utteranceId || Number(interim.dataset.start) <= end) {
      interim.remove();
    }
  }
  const text = message.autotranscribeResponse.utterance.map((part) => part.text).join(" ");
  const line = element("p", "line final");
  line.dataset.utterance = event.utteranceId;
  line.dataset.messageId = event.messageId;
  line.dataset.start = String(start);
  line.append(element("span", "time", clock(start)), " ", element("span", "text", text));
  appendInOrder(log, line, start);
}

// Start ------------------------------------------------------------------------------------

const config = await loadConfig();
const session = await checkSession();
if (session) {
  showCalls(session, false);
} else {
  showSignIn("");
}
updateEmpty();
