"""The look: Google's palette (in the spirit of the codelab's theme), system fonts, a phone-friendly layout.

System fonts only: the page makes no request outside this server (no web fonts from a CDN).
"""

from __future__ import annotations

import gradio as gr

GOOGLE_BLUE = gr.themes.Color(
    name="google_blue",
    c50="#E8F0FE",
    c100="#D2E3FC",
    c200="#AECBFA",
    c300="#8AB4F8",
    c400="#669DF6",
    c500="#4285F4",
    c600="#1A73E8",
    c700="#1967D2",
    c800="#185ABC",
    c900="#174EA6",
    c950="#0B2E6B",
)

FONT = ["system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica Neue", "Arial", "sans-serif"]
MONO = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
# Secondary text (footers, hints, the user's name, placeholders): 6.0:1 on #F8F9FA, 7.6:1 on #282828.
SUBDUED = "#5F6368"
SUBDUED_DARK = "#BDC1C6"


def theme() -> gr.themes.Base:
    """Gradio's default theme in Google's colours. Small and secondary text is dark enough to read:
    WCAG AA's 4.5:1 against the page and the panels in both modes (checked by tests/browser/
    test_accessibility.py from computed styles); dark mode is neutral greys throughout (Gradio's "gray"
    hue turns navy there)."""
    return gr.themes.Default(
        primary_hue=GOOGLE_BLUE,
        secondary_hue="neutral",
        neutral_hue="neutral",
        radius_size=gr.themes.sizes.radius_lg,
        font=FONT,
        font_mono=MONO,
    ).set(
        body_background_fill="#F8F9FA",
        body_background_fill_dark="#1F1F1F",
        background_fill_primary_dark="#282828",
        background_fill_secondary_dark="#1F1F1F",
        block_background_fill_dark="#282828",
        input_background_fill_dark="#303030",
        border_color_primary_dark="#4A4A4A",
        block_border_width="0px",
        block_shadow="none",
        body_text_color_subdued=SUBDUED,
        body_text_color_subdued_dark=SUBDUED_DARK,
        block_label_text_color=SUBDUED,
        block_label_text_color_dark=SUBDUED_DARK,
        block_info_text_color=SUBDUED,
        block_info_text_color_dark=SUBDUED_DARK,
        input_placeholder_color=SUBDUED,
        input_placeholder_color_dark=SUBDUED_DARK,
        link_text_color="#1967D2",
        link_text_color_dark="#8AB4F8",
        link_text_color_hover="#174EA6",
        link_text_color_hover_dark="#AECBFA",
        link_text_color_visited="#1967D2",
        link_text_color_visited_dark="#8AB4F8",
        link_text_color_active="#1967D2",
        link_text_color_active_dark="#8AB4F8",
        button_primary_background_fill="#1A73E8",
        button_primary_background_fill_hover="#1967D2",
        button_primary_text_color="#FFFFFF",
    )


CSS = """
#hc-header { align-items: center; gap: 8px; flex-wrap: wrap; }
#hc-header h1 { font-size: 1.25rem; margin: 0; font-weight: 600; white-space: nowrap; }
/* The picker shows short names (ui.chat.picker_choices): the long one is its hint (title). Its arrow has
   room of its own: the text never runs under it. */
#hc-model { max-width: 300px; min-width: 200px !important; }
#hc-model input { padding-right: 28px !important; text-overflow: ellipsis; }
.hc-health { display: inline-flex; gap: 12px; font-size: 0.85rem; color: var(--body-text-color-subdued); }
.hc-health-item { display: inline-flex; align-items: center; gap: 5px; cursor: default; white-space: nowrap; }
.hc-dot { width: 9px; height: 9px; border-radius: 50%; display: inline-block; background: #9AA0A6; }
.hc-dot.hc-up { background: #1E8E3E; }
.hc-dot.hc-down, .hc-dot.hc-misconfigured { background: #D93025; }
.hc-dot.hc-failing, .hc-dot.hc-recovering { background: #F9AB00; }
.hc-user { font-size: 0.85rem; color: var(--body-text-color-subdued); text-align: right; }
.hc-logout { display: inline; margin: 0; }
.hc-logout button { background: none; border: 0; padding: 0; color: var(--link-text-color); cursor: pointer;
  font: inherit; text-decoration: underline; }
.hc-foot { display: flex; flex-wrap: wrap; align-items: center; gap: 4px 8px; margin-top: 4px; }
.hc-meta { font-size: 0.75rem; color: var(--body-text-color-subdued); }
/* Before the first token: the page says an answer is coming (ui.page.DECORATE draws it). */
.hc-thinking { display: flex; align-items: center; gap: 8px; padding: 10px 14px; margin: 4px 0;
  color: var(--body-text-color-subdued); font-size: 0.9rem; }
.hc-thinking-dots span { display: inline-block; width: 6px; height: 6px; margin-right: 3px;
  border-radius: 50%; background: currentColor; animation: hc-blink 1.2s infinite ease-in-out both; }
.hc-thinking-dots span:nth-child(2) { animation-delay: 0.2s; }
.hc-thinking-dots span:nth-child(3) { animation-delay: 0.4s; }
@keyframes hc-blink { 0%, 80%, 100% { opacity: 0.25; } 40% { opacity: 1; } }
@media (prefers-reduced-motion: reduce) { .hc-thinking-dots span { animation: none; } }
.hc-meta-error { color: #B3261E; }
.dark .hc-meta-error { color: #F2B8B5; }
.hc-badge { font-size: 0.75rem; font-weight: 600; padding: 1px 8px; border-radius: 999px;
  background: #FEF7E0; color: #7A4F01; border: 1px solid #F9AB00; }
#hc-chatbot .message.bot:has(.hc-foot-error) { background: #FCE8E6 !important;
  border: 1px solid #F4B4AE !important; }
.dark #hc-chatbot .message.bot:has(.hc-foot-error) { background: #3C1F1E !important;
  border-color: #8C1D18 !important; }
.hc-typed { white-space: pre-wrap; overflow-wrap: anywhere; font: inherit; }
.hc-live-text { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; }
/* The page's early bubble stands where Gradio's "waiting" dots were (ui.page.EARLY_TOKENS). */
#hc-chatbot .message-wrap:has(> .hc-live) > .container:has(> .pending) { display: none; }
#hc-chatbot .message-content > .md:has(+ .hc-typed) { display: none; }
.hc-files { display: flex; flex-wrap: wrap; gap: 6px; margin-top: 6px; }
.hc-file { border: 1px solid var(--border-color-primary); border-radius: 6px; padding: 2px 8px;
  font-size: 0.85em; max-width: 100%; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
#hc-decor { display: none !important; }
/* One meaning per icon: "New conversation" starts a new chat, the trash icon would only duplicate it. */
#hc-chatbot button[aria-label="Clear"] { display: none; }
.hc-no-conversation #hc-manage { display: none !important; }
#hc-conversations label[data-hc-group] { position: relative; margin-top: 1.4em; overflow: visible; }
#hc-conversations label[data-hc-group]::before { content: attr(data-hc-group); position: absolute;
  top: -1.35em; left: 2px; font-size: 0.75rem; font-weight: 600; color: var(--body-text-color-subdued); }
.hc-health-state { font-size: 0.75rem; }
#hc-chatbot { flex-grow: 1; }
#hc-conversations { max-height: 60vh; overflow-y: auto; }
#hc-conversations label { width: 100%; position: relative; }
/* Inline rename (ui.page.RENAME_INLINE): the pencil sits at the entry's end; with a mouse it shows on
   hover, on keyboard focus and on the open entry; on a touch screen always (nothing to hover). */
#hc-conversations label { display: flex; align-items: center; }
#hc-conversations label > input[type=radio] + span { flex: 1 1 auto; min-width: 0; overflow-wrap: anywhere; }
.hc-rename { flex: 0 0 auto; margin-left: auto; padding: 0 6px; min-width: 28px; min-height: 28px;
  border: 0; background: none; cursor: pointer; color: var(--body-text-color-subdued); font-size: 1rem;
  border-radius: 6px; opacity: 0; }
.hc-rename:hover, .hc-rename:focus-visible { background: var(--background-fill-secondary);
  color: var(--body-text-color); }
#hc-conversations label:hover .hc-rename, #hc-conversations label:focus-within .hc-rename,
#hc-conversations label:has(input:checked) .hc-rename { opacity: 1; }
@media (hover: none) { .hc-rename { opacity: 1; } }
.hc-renaming > input[type=radio] + span, .hc-renaming .hc-rename { display: none; }
.hc-rename-input { flex: 1 1 auto; min-width: 0; font: inherit; padding: 2px 6px;
  border: 1px solid var(--color-accent); border-radius: 6px; background: var(--input-background-fill); }
#hc-conversations .wrap { flex-direction: column; gap: 4px; }
#hc-input textarea { font-size: 1rem; }
/* Gradio's footer: "Use via API" in readable grey, without the separator dot left after it. */
footer .show-api { color: var(--body-text-color-subdued) !important; }
footer .divider { display: none !important; }
/* Toasts open low on the right, over the chat, never over the header's health words and Sign out. */
.toast-wrap { top: auto !important; bottom: 170px !important; }
/* The starter prompts are cards in both modes. */
#hc-chatbot .examples .example { border: 1px solid var(--border-color-primary) !important;
  background: var(--background-fill-primary) !important; border-radius: 12px; }
#hc-chatbot .examples .example:hover { border-color: var(--color-accent) !important; }
/* Editing a message: the whole width, Send and Cancel as buttons (ui.page.EDIT_KEYS: Enter sends,
   Shift+Enter a new line, Escape cancels). */
#hc-chatbot .message-row:has(.edit-textarea), #hc-chatbot .message-row:has(.edit-textarea) .flex-wrap,
#hc-chatbot .message-row:has(.edit-textarea) .message,
#hc-chatbot .message-row:has(.edit-textarea) div:has(> .message) { width: 100% !important;
  max-width: 100% !important; margin: 0 !important; }
#hc-chatbot .edit-textarea { width: 100% !important; min-height: 5em !important; font: inherit;
  box-sizing: border-box;
  padding: 8px 10px; border: 2px solid var(--color-accent); border-radius: 8px;
  background: var(--input-background-fill); color: var(--body-text-color); }
#hc-chatbot .message-buttons:has(.hc-edit-send) .icon-button-wrapper { gap: 8px;
  background: none; border: 0; }
#hc-chatbot button.hc-edit-send, #hc-chatbot button.hc-edit-cancel { width: auto !important;
  height: auto !important; padding: 6px 14px !important; border-radius: 8px !important; font-size: 0.9rem;
  border: 1px solid var(--border-color-primary) !important; color: var(--body-text-color) !important; }
#hc-chatbot button.hc-edit-send { background: #1A73E8 !important; color: #FFFFFF !important;
  border-color: #1A73E8 !important; }
#hc-chatbot button.hc-edit-send > div, #hc-chatbot button.hc-edit-cancel > div { display: none; }
/* Continue: a plain button under its answer, not a dashed box at the far side. */
#hc-chatbot .message-wrap > .options, #hc-chatbot .options { justify-content: flex-start !important;
  margin-left: 0 !important; }
#hc-chatbot .option { border: 1px solid var(--border-color-primary) !important;
  border-style: solid !important; padding: 6px 14px !important; flex: 0 0 auto !important;
  width: auto !important; }
/* The conversation list as a list, not a form: no boxes around the choices, no radio dots. */
#hc-conversations { background: none; }
#hc-conversations label { border: 0 !important; background: none !important; box-shadow: none !important;
  padding: 6px 8px !important; border-radius: 8px !important; }
#hc-conversations label:hover { background: var(--background-fill-secondary) !important; }
#hc-conversations label:has(input:checked) { background: var(--color-accent-soft) !important; }
#hc-conversations input[type=radio] { position: absolute; opacity: 0; width: 1px; height: 1px; }
#hc-conversations label:has(input:focus-visible) { outline: 3px solid var(--color-accent);
  outline-offset: 1px; }
#hc-sidebar .block:has(#hc-conversations .wrap:empty), #hc-conversations:has(.wrap:empty) { display: none; }
/* Focus is always visible, strongly. */
:focus-visible { outline: 3px solid var(--color-accent) !important; outline-offset: 2px; }
.hc-skip { position: absolute; left: 8px; top: -48px; z-index: 1000; padding: 8px 14px; border-radius: 8px;
  background: #1A73E8; color: #FFFFFF !important; text-decoration: none; }
.hc-skip:focus { top: 8px; }
/* With the sidebar closed the chat column sits in the middle of the window. */
.gradio-container .main { margin-left: auto; margin-right: auto; }

@media (max-width: 767px) {
  .gradio-container { padding: 4px !important; }
  #hc-header { flex-wrap: wrap !important; row-gap: 4px; }
  #hc-header > * { min-width: 0 !important; flex: 0 0 auto !important; width: auto !important;
    padding: 0 !important; }
  #hc-brand, #hc-user-box { height: 28px; min-height: 0 !important; }
  #hc-health-box { height: 18px; }
  /* The header is two short rows: the app's name and who is signed in (with Sign out) beside the
     sidebar's toggle, then the model with the health words. */
  #hc-brand { margin: 0 0 0 40px !important; min-height: 28px; display: flex; align-items: center;
    justify-content: flex-start; }
  #hc-chatbot .placeholder-content, #hc-chatbot .placeholder { padding: 0 16px; }
  #hc-header h1 { font-size: 1.05rem; }
  #hc-user-box { order: 5; margin-left: auto; display: flex; align-items: center; }
  #hc-model, #hc-header > :has(#hc-model) { order: 10; flex: 1 1 150px !important; max-width: none;
    min-width: 0 !important; }
  #hc-health-box { order: 11; display: flex; align-items: center; min-height: 0 !important; }
  .hc-health { gap: 10px; font-size: 0.75rem; }
  .hc-health-item { gap: 4px; }
  #hc-health-box { margin: 0 !important; flex-basis: 100% !important; }
  #hc-chatbot { height: calc(100vh - 290px) !important; min-height: 260px; }
  /* An answer's footer: one line, what does not fit is cut with an ellipsis (the whole line is its
     title). The copy-conversation button stays inside the card. */
  .hc-foot .hc-meta { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; max-width: 100%; }
  #hc-chatbot .top-panel, #hc-chatbot .icon-button-wrapper.top-panel { right: 6px !important; }
}
"""
