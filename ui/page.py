"""The chat page: the layout of its components and the wiring of their events to `ChatHandlers`.

Nothing here decides anything: what each event does is a method of `ui.handlers.ChatHandlers`.
"""

from __future__ import annotations

import json
from typing import Any

import gradio as gr

from ui.chat import picker_choices
from ui.handlers import ChatHandlers

PHONE_MAX_WIDTH = 768
# On a phone the sidebar would cover the chat: close it at load and after picking a conversation.
CLOSE_SIDEBAR_ON_PHONE = f"""() => {{
  if (window.innerWidth >= {PHONE_MAX_WIDTH}) return;
  const bar = document.querySelector('#hc-sidebar');
  const open = bar && (bar.classList.contains('open') || bar.closest('.sidebar.open'));
  if (open) bar.querySelector('button[aria-label="Toggle Sidebar"]')?.click();
}}"""
# Back to the message box after an answer, so the next message needs no click first; not on a touch
# screen, where focusing would pull the keyboard over the answer just received.
FOCUS_INPUT = """() => {
  if (window.matchMedia('(pointer: fine)').matches) document.querySelector('#hc-input textarea')?.focus();
}"""
# Enter empties the box in the browser at once, before the turn starts on the server: a reply that
# emptied it later would erase what was typed meanwhile (and an extra round trip would delay the
# answer). The text still goes to `send`, which puts it back if a limit refuses it. While an answer
# streams, Enter does nothing (Gradio runs one `submit` at a time) and the text stays: only Send waits.
# Attached files leave the box the same way (a copy of the values goes to `send`, then each file's
# Remove button is clicked), so the first reply need not set the box's value either. Last file first:
# a Remove button removes the file at its position when it was drawn, so after the first file went the
# second button would miss (an image and a PDF sent together left the PDF in the box).
# The message is the text the box held at Enter (or Send), noted then by TAKE_AT_ENTER: Gradio runs
# this tens of milliseconds later (more on a busy machine), and what was typed meanwhile is the start of
# the next message, so it stays in the box (it was wiped: the box then showed "en" for "and then").
# The last input is the id under which EARLY_TOKENS sent the same message straight to the server.
TAKE_INPUT = """(...args) => {
  const out = structuredClone(args);
  out[out.length - 1] = window.__hcTurn || '';
  window.__hcTurn = '';
  const box = document.querySelector('#hc-input textarea');
  const sent = window.__hcAtEnter;
  window.__hcAtEnter = null;
  let rest = '';
  if (box && typeof sent === 'string' && box.value.startsWith(sent)) {
    rest = box.value.slice(sent.length);
    if (out[0] && typeof out[0] === 'object') out[0].text = sent; else out[0] = sent;
  }
  if (box) { box.value = rest; box.dispatchEvent(new Event('input', {bubbles: true})); }
  const removes = document.querySelectorAll('#hc-input button[aria-label="Remove file"]');
  Array.from(removes).reverse().forEach((b) => b.click());
  return out;
}"""
# What the page draws beside Gradio's chat, from the hidden `#hc-decor` element (ui.chat.decorations):
# under each answer its footer (who answered, route, timings, a fallback badge, an error's reference),
# each user message as typed (Gradio renders every message as Markdown), and the open conversation in
# the address (`?c=<id>`, which a reload reopens). The footer lives outside the message's text, so the
# copy buttons and a reload never see it. Written by hand: Gradio's Chatbot has no per-message footer
# nor a per-message "plain text" switch. Idempotent, redrawn on every change of the chat.
DECORATE = """() => {
  if (window.__hcDecorate) return;
  const apply = () => {
    const holder = document.querySelector('#hc-decor .hc-decor');
    const chat = document.querySelector('#hc-chatbot');
    if (!holder || !chat) return;
    let data;
    try { data = JSON.parse(holder.dataset.hc); } catch (e) { return; }
    const users = data.rows.filter((r) => 'typed' in r);
    const answers = data.rows.filter((r) => !('typed' in r));
    chat.querySelectorAll('[data-testid="user"]').forEach((el, i) => typed(el, users[i]));
    chat.querySelectorAll('[data-testid="bot"]').forEach((el, i) => footer(el, answers[i]));
    // Gradio's starters are buttons in a role="list" without list items (axe: critical): a plain group.
    chat.querySelectorAll('.examples[role="list"]').forEach((el) => el.removeAttribute('role'));
    chat.querySelectorAll('.edit-textarea:not([aria-label])').forEach((t) => {
      t.setAttribute('aria-label', 'Edit your message');
      t.setAttribute('enterkeyhint', 'send');
    });
    // The edit field's check and cross are Send and Cancel, by name too (EDIT_KEYS; CSS draws the words).
    for (const [from, to, cls, hint] of [['Submit', 'Send', 'hc-edit-send', 'Send (Enter)'],
      ['Cancel', 'Cancel', 'hc-edit-cancel', 'Cancel (Escape)']]) {
      chat.querySelectorAll(`button[aria-label="${from}"]:not(.${cls})`).forEach((b) => {
        b.classList.add(cls);
        b.setAttribute('aria-label', to);
        b.title = hint;
        const word = document.createElement('span');
        word.className = 'hc-edit-word';
        word.textContent = to;
        b.append(word);
      });
    }
    thinking(chat);
    document.body.classList.toggle('hc-no-conversation', !data.sid);
    window.__hcSid = data.sid || null;  // where EARLY_TOKENS sends a message
    groups(data.updated || {});
    const url = new URL(window.location.href);
    const want = data.sid || null;
    if ((url.searchParams.get('c') || null) !== want) {
      if (want) url.searchParams.set('c', want); else url.searchParams.delete('c');
      window.history.replaceState(window.history.state, '', url);
    }
  };
  const typed = (el, row) => {
    const md = el.querySelector('.message-content > .md');
    let t = el.querySelector('.hc-typed');
    if (!row || !md) { t?.remove(); el.querySelector('.hc-files')?.remove(); return; }
    if (!t || t.previousElementSibling !== md) {
      t?.remove();
      t = document.createElement('div');
      t.className = 'hc-typed';
      md.after(t);
    }
    if (t.textContent !== row.typed) t.textContent = row.typed;
    files(el, t, row.files || []);
  };
  // The message's attachments as chips (name, type, size): the stored message keeps a reference to
  // each file, not its bytes, so a reload shows them from the decorations.
  const files = (el, after, list) => {
    let box = el.querySelector('.hc-files');
    const key = JSON.stringify(list);
    if (!list.length) { box?.remove(); return; }
    if (box && box.dataset.key === key && box.previousElementSibling === after) return;
    box?.remove();
    box = document.createElement('div');
    box.className = 'hc-files';
    box.dataset.key = key;
    for (const f of list) {
      const chip = document.createElement('span');
      chip.className = 'hc-file';
      chip.title = f.name;
      chip.textContent = `${f.name} · ${f.mime} · ${f.size}`;
      box.append(chip);
    }
    after.after(box);
  };
  const footer = (el, row) => {
    let f = el.querySelector(':scope > .hc-foot');
    if (!row || (!row.line && !row.badge)) { f?.remove(); return; }
    const key = JSON.stringify(row);
    if (f && f.dataset.key === key) return;
    if (!f) { f = document.createElement('div'); el.appendChild(f); }
    f.dataset.key = key;
    f.className = row.kind === 'answer' ? 'hc-foot' : 'hc-foot hc-foot-error';
    f.replaceChildren();
    for (const [cls, text] of [['hc-badge', row.badge], [row.cls, row.line]]) {
      if (!text) continue;
      const span = document.createElement('span');
      span.className = cls;
      span.textContent = text;
      span.title = text;  // on a phone the footer is one line, cut with an ellipsis
      f.append(span);
    }
  };
  // From Send to the first token: "Thinking" under the question (Gradio shows nothing there), while
  // the turn runs (Stop is shown) and no answer bubble (Gradio's, or the page's early one) follows it.
  const thinking = (chat) => {
    const wrap = chat.querySelector('.message-wrap');
    let t = chat.querySelector('.hc-thinking');
    const rows = wrap ? Array.from(wrap.children).filter((n) => n.classList.contains('message-row')) : [];
    const last = rows[rows.length - 1];
    const want = !!document.querySelector('#hc-input button.stop-button') && !!last
      && last.classList.contains('user-row') && !wrap.querySelector('.hc-live');
    if (!want) { t?.remove(); return; }
    if (t && t.previousElementSibling === last) return;
    t?.remove();
    t = document.createElement('div');
    t.className = 'hc-thinking';
    t.setAttribute('role', 'status');
    const dots = document.createElement('span');
    dots.className = 'hc-thinking-dots';
    dots.setAttribute('aria-hidden', 'true');
    dots.append(...[0, 1, 2].map(() => document.createElement('span')));
    t.append(dots, 'Thinking\u2026');
    last.after(t);
  };
  // The conversation list by day, in the browser's time zone: the first entry of each group carries
  // its heading (drawn by CSS from data-hc-group: Gradio's Radio has no headings of its own).
  const groups = (updated) => {
    const today = new Date(); today.setHours(0, 0, 0, 0);
    const day = 86400000;
    let last = null;
    document.querySelectorAll('#hc-conversations label').forEach((label) => {
      const at = updated[label.querySelector('input')?.value];
      let name = null;
      if (at) {
        const t = new Date(at);
        const days = Math.floor((today - new Date(t.getFullYear(), t.getMonth(), t.getDate())) / day);
        const month = t.toLocaleDateString(undefined, {month: 'long', year: 'numeric'});
        name = days <= 0 ? 'Today' : days === 1 ? 'Yesterday' : days < 7 ? 'Previous 7 days'
          : days < 30 ? 'Previous 30 days' : month;
      }
      const head = name && name !== last ? name : null;
      if (name) last = name;
      if (head) { if (label.dataset.hcGroup !== head) label.dataset.hcGroup = head; }
      else if (label.dataset.hcGroup) delete label.dataset.hcGroup;
    });
  };
  let queued = false;
  const schedule = () => {
    if (queued) return;
    queued = true;
    window.requestAnimationFrame(() => { queued = false; apply(); });
  };
  new MutationObserver(schedule).observe(document.body, {
    childList: true, subtree: true, characterData: true, attributes: true, attributeFilter: ['data-hc'],
  });
  window.__hcDecorate = apply;
  schedule();
}"""
# Inline rename in the conversation list: a Rename button (pencil) on each entry opens a field in
# place, prefilled with the title; Enter saves, Escape or leaving the field restores it, and nothing is
# sent. F2 on an entry does the same from the keyboard, and double-clicking a title too. The button is
# always there on a touch screen (no hover), on hover, focus and the open entry otherwise (CSS). Enter
# hands {sid, title} to the hidden `#hc-rename-go` button (RENAME_REQUEST reads it), which renames by id
# on the server. Written by hand: Gradio's Radio has no per-choice actions or editing. Idempotent, like
# DECORATE; the radio's accessible name is set to the title so the button's name does not join it.
RENAME_INLINE = """() => {
  if (window.__hcRename) return;
  const titleOf = (label) => label.querySelector('input[type=radio] + span')?.textContent ?? '';
  const decorate = () => {
    document.querySelectorAll('#hc-conversations label').forEach((label) => {
      const radio = label.querySelector('input[type=radio]');
      if (!radio || !radio.value) return;
      const title = titleOf(label);
      if (radio.getAttribute('aria-label') !== title) radio.setAttribute('aria-label', title);
      if (!radio.hasAttribute('aria-keyshortcuts')) radio.setAttribute('aria-keyshortcuts', 'F2');
      let b = label.querySelector(':scope > .hc-rename');
      if (!b) {
        b = document.createElement('button');
        b.type = 'button';
        b.className = 'hc-rename';
        b.textContent = '\\u270E';
        b.title = 'Rename (F2)';
        b.addEventListener('click', (e) => { e.preventDefault(); e.stopPropagation(); edit(label); });
        label.append(b);
      }
      // In the Tab order for the open conversation only (the list is one Tab stop, not one per entry):
      // F2 renames any entry from the keyboard.
      const stop = radio.checked ? 0 : -1;
      if (b.tabIndex !== stop) b.tabIndex = stop;
      const name = `Rename \\u201C${title}\\u201D`;
      if (b.getAttribute('aria-label') !== name) b.setAttribute('aria-label', name);
    });
  };
  const edit = (label) => {
    if (label.querySelector('.hc-rename-input')) return;
    const radio = label.querySelector('input[type=radio]');
    const span = label.querySelector('input[type=radio] + span');
    if (!radio || !span) return;
    const sid = radio.value;
    const old = titleOf(label);
    const box = document.createElement('input');
    box.type = 'text';
    box.className = 'hc-rename-input';
    box.value = old.replace(/\\s*\u2026$/, '');  // an auto-title cut with "…": the words, to go on
    box.maxLength = 200;
    box.setAttribute('aria-label', 'New title');
    box.setAttribute('enterkeyhint', 'done');
    label.classList.add('hc-renaming');
    span.after(box);
    let open = true;
    const close = (refocus) => {
      if (!open) return;
      open = false;
      box.remove();
      label.classList.remove('hc-renaming');
      if (refocus) label.querySelector('.hc-rename')?.focus();
    };
    box.addEventListener('keydown', (e) => {
      e.stopPropagation();  // the list's own keys (arrows, F2) and Gradio's stay out of the field
      if (e.key === 'Enter' && !e.isComposing) {
        e.preventDefault();
        const title = box.value.trim();
        close(true);
        if (title && title !== old) save(sid, title);
      } else if (e.key === 'Escape') {
        e.preventDefault();
        close(true);
      }
    });
    box.addEventListener('blur', () => close(false));
    // A click in the field must not choose the entry (it is inside the entry's label).
    box.addEventListener('click', (e) => { e.preventDefault(); e.stopPropagation(); });
    box.focus();
    box.select();
  };
  const save = (sid, title) => {
    window.__hcRenameRequest = JSON.stringify({sid, title});
    document.querySelector('#hc-rename-go')?.click();
  };
  document.addEventListener('keydown', (e) => {
    const radio = e.target.closest?.('#hc-conversations input[type=radio]');
    if (e.key === 'F2' && radio) { e.preventDefault(); edit(radio.closest('label')); }
  });
  document.addEventListener('dblclick', (e) => {
    const label = e.target.closest?.('#hc-conversations label');
    if (label && !e.target.closest('.hc-rename-input')) edit(label);
  });
  let queued = false;
  const schedule = () => {
    if (queued) return;
    queued = true;
    window.requestAnimationFrame(() => { queued = false; decorate(); });
  };
  const watched = {childList: true, subtree: true, characterData: true};
  new MutationObserver(schedule).observe(document.body, watched);
  document.addEventListener('change', schedule, true);
  window.__hcRename = edit;
  schedule();
}"""
# The first tokens of an answer, drawn by the page itself (see ui/live.py for why). On Enter or Send,
# before Gradio's front end even sends its event, the message goes straight to `POST /page/turn` under a
# fresh id that Gradio's event carries too (TAKE_INPUT): the first of the two to arrive starts the
# turn, the other follows it. The straight answer is drawn in a bubble of its own (a copy of the chat's
# own bubble) until Gradio's bubble for the turn shows text, then removed: Gradio's chat stays the
# truth. Not used for messages with files, while an answer streams, or when the route is not there
# (401/404: then never again in this tab). `window.__hcParams` mirrors the generation settings
# (MIRROR_PARAMS), `window.__hcSid` the open conversation (DECORATE).
EARLY_TOKENS = """() => {
  if (window.__hcEarly) return;
  window.__hcEarly = true;
  let busy = false;
  const q = (sel) => document.querySelector(sel);
  const bots = () => document.querySelectorAll('#hc-chatbot [data-testid="bot"]');
  const users = () => document.querySelectorAll('#hc-chatbot [data-testid="user"]');
  const newId = () => Array.from(crypto.getRandomValues(new Uint8Array(16)),
    (b) => b.toString(16).padStart(2, '0')).join('');
  const bubble = (wrap) => {
    const proto = wrap.querySelector('.message-row.bot-row') || wrap.querySelector('.message-row');
    const el = proto ? proto.cloneNode(true) : document.createElement('div');
    el.classList.remove('user-row');
    el.classList.add('bot-row', 'hc-live');
    el.querySelectorAll('[data-testid]').forEach((n) => n.removeAttribute('data-testid'));
    el.querySelectorAll('.message.user').forEach((n) => n.classList.replace('user', 'bot'));
    el.querySelectorAll('.latest').forEach((n) => n.classList.remove('latest'));
    el.querySelectorAll('.hc-typed, .hc-files, .hc-foot').forEach((n) => n.remove());
    const p = document.createElement('p');
    p.className = 'hc-live-text';
    const content = el.querySelector('.message-content');
    const md = content?.querySelector('.md');
    if (md) { md.replaceChildren(p); content.replaceChildren(md); } else el.replaceChildren(p);
    el.setAttribute('aria-busy', 'true');
    return el;
  };
  const run = async (id, text, n0, u0) => {
    busy = true;
    const [model, temperature, top_p, max_tokens, system_prompt] = window.__hcParams;
    let shown = '', live = null, handed = false;
    const handover = () => {
      const b = bots();
      if (b.length > n0 && b[n0].textContent.trim()) { handed = true; live?.remove(); live = null; }
      return handed;
    };
    // Drawn below the question once Gradio shows it (a fast model's first token can come sooner).
    const paint = () => {
      if (handover() || !shown || users().length <= u0) return;
      const wrap = q('#hc-chatbot .message-wrap');
      if (!wrap) return;
      live = live || bubble(wrap);
      if (wrap.lastElementChild !== live) wrap.append(live);
      const p = live.querySelector('.hc-live-text');
      if (p.textContent === shown) return;  // also called by the observer: no change, no mutation
      p.textContent = shown;
      const box = q('#hc-chatbot .bubble-wrap');
      if (box) box.scrollTop = box.scrollHeight;
    };
    const watch = new MutationObserver(() => paint());
    watch.observe(q('#hc-chatbot'), {childList: true, subtree: true, characterData: true});
    try {
      const r = await fetch('page/turn', {
        method: 'POST',
        headers: {'content-type': 'application/json'},
        body: JSON.stringify({turn_id: id, session_id: window.__hcSid || null, message: text,
          model, temperature, top_p, max_tokens, system_prompt}),
      });
      if ([401, 404, 405].includes(r.status)) window.__hcEarlyOff = true;
      if (!r.ok || !r.body) return;
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = '';
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buf += dec.decode(value, {stream: true});
        let i;
        while ((i = buf.indexOf('\\n\\n')) >= 0) {
          const ev = buf.slice(0, i);
          buf = buf.slice(i + 2);
          if (!ev.startsWith('event: delta')) continue;
          shown += JSON.parse(ev.slice(ev.indexOf('data: ') + 6)).text;
          paint();
        }
      }
    } catch (e) {
      // Gradio's event shows the turn (or why it failed): this was only a head start.
    } finally {
      // Until Gradio's chat shows the answer (or 10 s: a stopped or refused turn may add none).
      const until = Date.now() + 10000;
      while (live && !handover() && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
      watch.disconnect();
      live?.remove();
      busy = false;
    }
  };
  const start = () => {
    if (window.__hcEarlyOff || busy || !window.__hcParams) return;
    if (q('#hc-input button.stop-button') || q('#hc-input button[aria-label="Remove file"]')) return;
    const text = q('#hc-input textarea')?.value ?? '';
    if (!text.trim()) return;
    const id = newId();
    window.__hcTurn = id;
    setTimeout(() => { if (window.__hcTurn === id) window.__hcTurn = ''; }, 2000);  // never sent
    run(id, text, bots().length, users().length);
  };
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.target.closest?.('#hc-input')) start();
  }, true);
  document.addEventListener('click', (e) => {
    if (e.target.closest?.('#hc-input button.submit-button')) start();
  }, true);
}"""
# The box's text at the moment Enter (or Send) sends it, for TAKE_INPUT: captured before Gradio's own
# handlers, which send the event later.
TAKE_AT_ENTER = """() => {
  if (window.__hcAtEnterOn) return;
  window.__hcAtEnterOn = true;
  const note = () => { window.__hcAtEnter = document.querySelector('#hc-input textarea')?.value ?? null; };
  document.addEventListener('keydown', (e) => {
    const inBox = e.target.closest?.('#hc-input textarea');
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && inBox) note();
  }, true);
  document.addEventListener('click', (e) => {
    if (e.target.closest?.('#hc-input button.submit-button')) note();
  }, true);
}"""
# Editing a message (Gradio's edit field in the chat) works as the message box does: Enter sends,
# Shift+Enter starts a new line, Escape cancels (Gradio's field adds a line on Enter and has no Escape).
EDIT_KEYS = """() => {
  if (window.__hcEditKeys) return;
  window.__hcEditKeys = true;
  document.addEventListener('keydown', (e) => {
    const field = e.target.closest?.('#hc-chatbot .edit-textarea');
    if (!field || e.isComposing) return;
    const which = e.key === 'Escape' ? ['hc-edit-cancel', 'Cancel']
      : (e.key === 'Enter' && !e.shiftKey ? ['hc-edit-send', 'Submit'] : null);
    if (!which) return;
    e.preventDefault();
    e.stopPropagation();
    const [cls, label] = which;
    document.querySelector(`#hc-chatbot button.${cls}, #hc-chatbot button[aria-label="${label}"]`)?.click();
  }, true);
}"""
# The first Tab stop of the page: "Skip to the message box" (shown when focused), as sites with a
# sidebar do: the box is one Tab and Enter away from the top, whatever the sidebar lists.
SKIP_LINK = """() => {
  if (document.querySelector('.hc-skip')) return;
  const a = document.createElement('a');
  a.className = 'hc-skip';
  a.href = '#hc-input';
  a.textContent = 'Skip to the message box';
  a.addEventListener('click', (e) => {
    e.preventDefault();
    document.querySelector('#hc-input textarea')?.focus();
  });
  document.body.prepend(a);
}"""
# The model picker's short names, each with its long name as the hint (the input's title, and each
# option's): what really answers. `window.__hcHints` maps a choice's value to its long name.
PICKER_HINT = """(value) => {
  const hints = window.__hcHints || {};
  const input = document.querySelector('#hc-model input');
  if (input) input.title = hints[value] || '';
  if (!window.__hcHintsOn) {
    window.__hcHintsOn = true;
    const names = Object.fromEntries(Object.values(hints).map((long) => [long.split(':')[0].trim(), long]));
    new MutationObserver(() => {
      document.querySelectorAll('ul[role=listbox] li[role=option]').forEach((li) => {
        const name = li.textContent.replace('\u2713', '').trim();
        const long = names[name] || Object.values(hints).find((h) => h.startsWith(name));
        if (long && li.title !== long) li.title = long;
      });
    }).observe(document.body, {childList: true, subtree: true});
  }
}"""
# The generation settings as Gradio sends them, for EARLY_TOKENS.
MIRROR_PARAMS = "(...values) => { window.__hcParams = values; }"
# The request Enter left in the page (RENAME_INLINE), handed to `ChatHandlers.rename_listed`.
RENAME_REQUEST = """(request, st) => {
  const out = [window.__hcRenameRequest || '', st];
  window.__hcRenameRequest = '';
  return out;
}"""
# An empty chat offers these (a click sends one).
STARTERS = [
    "Explain Kubernetes in three sentences.",
    "Write a Python function that checks whether a string is a palindrome.",
    "Suggest a name for a team chat bot.",
]
# Turns are not limited by Gradio's queue: the one stream limit (`ChatService.streams`, shared with
# `/api/chat`) holds them, waiting a bounded time and then saying the server is busy.
TURN_CONCURRENCY = None
PASTED_TEXT_STAYS_TEXT = 1_000_000_000


def build_page(h: ChatHandlers) -> gr.Blocks:
    """The chat page over `h`'s handlers."""
    # --- layout ------------------------------------------------------------------------------
    with gr.Blocks(title="hybrid-chat", fill_height=True) as demo:
        state = gr.State(None)
        with gr.Sidebar(label="Conversations", open=True, elem_id="hc-sidebar"):
            new_btn = gr.Button("New conversation", variant="primary", size="sm", elem_id="hc-new")
            conv = gr.Radio(
                choices=[],
                label="Conversations",
                show_label=False,
                elem_id="hc-conversations",
                interactive=True,
            )
            more_btn = gr.Button("Older conversations", size="sm", visible=False, elem_id="hc-more")
            # Inline rename's way to the server (RENAME_INLINE clicks it): in the page, never seen.
            rename_request = gr.Textbox(visible=False)
            rename_go = gr.Button("Rename", visible="hidden", elem_id="hc-rename-go")
            # The id EARLY_TOKENS sent the message under (TAKE_INPUT fills it): in the page, never seen.
            turn_id = gr.Textbox(visible=False)
            # Shown only while a saved conversation is open (ui/page.js toggles `hc-no-conversation`).
            with gr.Column(elem_id="hc-manage"):
                title_box = gr.Textbox(
                    label="Title",
                    placeholder="New title",
                    max_lines=1,
                    elem_id="hc-title",
                    submit_btn="Rename",
                )
                delete_btn = gr.Button(
                    "Delete conversation", size="sm", variant="secondary", elem_id="hc-delete"
                )
                # The second step of Delete: confirm, or cancel (the row is what arm/disarm show and hide).
                with gr.Row(visible=False, elem_id="hc-delete-step") as confirm_row:
                    confirm_btn = gr.Button(
                        "Delete for good", size="sm", variant="stop", elem_id="hc-delete-confirm"
                    )
                    cancel_btn = gr.Button(
                        "Cancel", size="sm", variant="secondary", elem_id="hc-delete-cancel"
                    )
        with gr.Row(elem_id="hc-header", equal_height=True):
            gr.HTML("<h1>hybrid-chat</h1>", padding=False, scale=0, min_width=110, elem_id="hc-brand")
            choices, hints = picker_choices(h.service.client)
            model = gr.Dropdown(
                choices=choices,
                value=h.settings.default_model,
                label="Model",
                show_label=False,
                elem_id="hc-model",
                interactive=True,
                container=False,
                scale=1,
                min_width=160,
            )
            health = gr.HTML(h.health_html(), elem_id="hc-health-box", padding=False, scale=0, min_width=290)
            who = gr.HTML("", elem_id="hc-user-box", padding=False, scale=0, min_width=80)
        chatbot = gr.Chatbot(
            elem_id="hc-chatbot",
            show_label=False,
            editable="user",
            buttons=["copy", "copy_all"],
            group_consecutive_messages=False,
            feedback_options=None,
            placeholder="Ask anything. Answers stream from the model you choose above.",
            examples=[{"text": t} for t in STARTERS],
            height="60vh",
            min_height=260,
            autoscroll=True,
        )
        # Gradio's multimodal box: attach by its button, by paste or by drag-and-drop, with thumbnails
        # before sending (each file is checked from its bytes when the message is sent: ui.handlers).
        # Pasted text stays text however long (Gradio would turn more than 1,000 characters into a
        # file): the message's length limit refuses it in words.
        textbox = gr.MultimodalTextbox(
            placeholder="Message hybrid-chat",
            label="Message",
            show_label=False,
            submit_btn=True,
            stop_btn=False,
            lines=1,
            max_lines=8,
            autofocus=False,  # FOCUS_INPUT at load: on a touch screen the keyboard would cover the page
            elem_id="hc-input",
            file_types=["image", ".pdf"],
            file_count="multiple",
            sources=["upload"],
            max_plain_text_length=PASTED_TEXT_STAYS_TEXT,
        )
        with gr.Accordion("Generation settings", open=False, elem_id="hc-settings"):
            with gr.Row():
                temperature = gr.Slider(0, 2, value=h.settings.temperature, step=0.05, label="Temperature")
                top_p = gr.Slider(0.01, 1, value=h.settings.top_p, step=0.01, label="Top p")
                max_tokens = gr.Slider(
                    1, 4096, value=min(h.settings.max_tokens, 4096), step=1, label="Max tokens"
                )
            system = gr.Textbox(value=h.settings.system_prompt, label="Persona (system prompt)", lines=2)
        decor = gr.HTML("", elem_id="hc-decor", padding=False, container=False)
        timer = gr.Timer(20)

        gen_inputs = [model, temperature, top_p, max_tokens, system]
        turn_outputs = [chatbot, textbox, state, health, decor]
        turn_kwargs: dict[str, Any] = {
            "api_visibility": "private",
            "concurrency_limit": TURN_CONCURRENCY,
            "show_progress": "minimal",
        }
        send_ev = textbox.submit(
            h.send, [textbox, state, *gen_inputs, turn_id], turn_outputs, js=TAKE_INPUT, **turn_kwargs
        )
        retry_ev = chatbot.retry(h.regenerate, [state, *gen_inputs], turn_outputs, **turn_kwargs)
        edit_ev = chatbot.edit(h.edit_resend, [state, *gen_inputs], turn_outputs, **turn_kwargs)
        option_ev = chatbot.option_select(h.follow_up, [state, *gen_inputs], turn_outputs, **turn_kwargs)
        starter_ev = chatbot.example_select(h.starter, [state, *gen_inputs], turn_outputs, **turn_kwargs)
        turns = [send_ev, retry_ev, edit_ev, option_ev, starter_ev]
        for ev in turns:
            ev.then(
                h.after_turn,
                [state],
                [textbox, conv, decor, title_box],
                api_visibility="private",
                show_progress="hidden",
            ).then(None, js=FOCUS_INPUT)
        textbox.stop(
            h.stop,
            [state],
            [chatbot, conv, decor],
            cancels=turns,
            api_visibility="private",
            queue=False,
        ).then(None, js=FOCUS_INPUT)

        # A new conversation is in the list from its first message on, not only once answered.
        decor.change(
            h.list_new_conversation, [state], [conv, decor], api_visibility="private", show_progress="hidden"
        )
        demo.load(None, js=DECORATE)
        demo.load(None, js=EARLY_TOKENS)
        demo.load(None, js=TAKE_AT_ENTER)
        demo.load(None, js=EDIT_KEYS)
        demo.load(None, js=SKIP_LINK)
        demo.load(None, js=FOCUS_INPUT)
        hints_js = f"window.__hcHints = {json.dumps(hints)};"
        demo.load(None, [model], None, js=PICKER_HINT.replace("(value) => {", "(value) => {" + hints_js, 1))
        model.change(None, [model], None, js=PICKER_HINT)
        demo.load(None, gen_inputs, None, js=MIRROR_PARAMS)
        for setting in gen_inputs:
            setting.change(None, gen_inputs, None, js=MIRROR_PARAMS)
        demo.load(None, js=RENAME_INLINE)
        demo.load(
            h.on_load,
            None,
            [state, conv, more_btn, who, health, chatbot, title_box, decor, model],
            api_visibility="private",
        )
        demo.load(None, js=CLOSE_SIDEBAR_ON_PHONE)
        conv.input(
            h.open_conversation,
            [conv, state],
            [chatbot, state, title_box, decor, conv],
            api_visibility="private",
            show_progress="minimal",
        )
        more_btn.click(h.more_conversations, [state], [conv, more_btn, decor], api_visibility="private")
        new_btn.click(
            h.new_conversation,
            [state],
            [chatbot, state, conv, title_box, decor],
            api_visibility="private",
            queue=False,
        )
        title_box.submit(h.rename, [title_box, state], [conv], api_visibility="private")
        rename_go.click(
            h.rename_listed,
            [rename_request, state],
            [conv, title_box],
            js=RENAME_REQUEST,
            api_visibility="private",
            show_progress="hidden",
        )
        delete_btn.click(
            h.arm_delete, [state], [delete_btn, confirm_row], api_visibility="private", queue=False
        )
        confirm_btn.click(
            h.delete,
            [state],
            [chatbot, state, conv, more_btn, delete_btn, confirm_row, decor],
            api_visibility="private",
        )
        for trigger in (new_btn.click, conv.input, cancel_btn.click):
            trigger(h.disarm_delete, None, [delete_btn, confirm_row], api_visibility="private", queue=False)
        for trigger in (new_btn.click, conv.input):
            trigger(None, js=CLOSE_SIDEBAR_ON_PHONE)
        timer.tick(h.health_html, None, health, api_visibility="private", show_progress="hidden", queue=False)

        gr.api(
            h.chat,
            api_name="chat",
            concurrency_limit=TURN_CONCURRENCY,
        )
        gr.api(h.turn, api_name="turn", concurrency_limit=TURN_CONCURRENCY)
        gr.api(h.conversations, api_name="conversations")
        gr.api(h.conversation, api_name="conversation")
    demo.queue(default_concurrency_limit=h.settings.max_concurrent_streams)
    return demo
