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


def theme() -> gr.themes.Base:
    return gr.themes.Default(
        primary_hue=GOOGLE_BLUE,
        secondary_hue="gray",
        neutral_hue="gray",
        radius_size=gr.themes.sizes.radius_lg,
        font=FONT,
        font_mono=MONO,
    ).set(
        body_background_fill="#F8F9FA",
        body_background_fill_dark="#1F1F1F",
        block_border_width="0px",
        block_shadow="none",
        button_primary_background_fill="#1A73E8",
        button_primary_background_fill_hover="#1967D2",
        button_primary_text_color="#FFFFFF",
    )


CSS = """
#hc-header { align-items: center; gap: 8px; flex-wrap: wrap; }
#hc-header h1 { font-size: 1.25rem; margin: 0; font-weight: 600; white-space: nowrap; }
#hc-model { max-width: 400px; min-width: 320px !important; }
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
.hc-meta-error { color: #B3261E; }
.hc-badge { font-size: 0.75rem; font-weight: 600; padding: 1px 8px; border-radius: 999px;
  background: #FEF7E0; color: #7A4F01; border: 1px solid #F9AB00; }
#hc-chatbot .message.bot:has(.hc-foot-error) { background: #FCE8E6 !important;
  border: 1px solid #F4B4AE !important; }
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
#hc-conversations label { width: 100%; }
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
@media (max-width: 767px) {
  .gradio-container { padding: 4px !important; }
  #hc-header { flex-wrap: wrap !important; row-gap: 6px; }
  #hc-header > * { min-width: 0 !important; flex: 0 0 auto !important; width: auto !important; }
  /* The header is two short rows (health beside the sidebar's toggle, then the model): the name is in
     the browser's tab already. */
  #hc-brand { display: none !important; }
  #hc-health-box { margin-left: 40px; min-height: 32px; display: flex; align-items: center; }
  #hc-model { order: 10; flex-basis: 100% !important; max-width: none; min-width: 0 !important; }
  #hc-user-box { display: none; }
  #hc-chatbot { height: calc(100vh - 220px) !important; min-height: 260px; }
  .hc-health { gap: 8px; }
}
"""
