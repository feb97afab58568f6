"""The chat page: the layout of its components and the wiring of their events to `ChatHandlers`.

Nothing here decides anything: what each event does is a method of `ui.handlers.ChatHandlers`.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from ui.chat import MODEL_CHOICES
from ui.handlers import ChatHandlers

PHONE_MAX_WIDTH = 768
# On a phone the sidebar would cover the chat: close it at load and after picking a conversation.
CLOSE_SIDEBAR_ON_PHONE = f"""() => {{
  if (window.innerWidth >= {PHONE_MAX_WIDTH}) return;
  const bar = document.querySelector('#hc-sidebar');
  const open = bar && (bar.classList.contains('open') || bar.closest('.sidebar.open'));
  if (open) bar.querySelector('button[aria-label="Toggle Sidebar"]')?.click();
}}"""
# Turns are not limited by Gradio's queue: the one stream limit (`ChatService.streams`, shared with
# `/api/chat`) holds them, waiting a bounded time and then saying the server is busy.
TURN_CONCURRENCY = None


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
            title_box = gr.Textbox(
                label="Title",
                placeholder="New title",
                max_lines=1,
                elem_id="hc-title",
                submit_btn="Rename",
            )
            delete_btn = gr.Button("Delete conversation", size="sm", variant="secondary", elem_id="hc-delete")
            confirm_btn = gr.Button(
                "Delete for good", size="sm", variant="stop", visible=False, elem_id="hc-delete-confirm"
            )
        with gr.Row(elem_id="hc-header", equal_height=True):
            gr.HTML("<h1>hybrid-chat</h1>", padding=False, scale=0, min_width=110)
            model = gr.Dropdown(
                choices=MODEL_CHOICES,
                value=h.settings.default_model,
                label="Model",
                show_label=False,
                elem_id="hc-model",
                interactive=True,
                container=False,
                scale=1,
                min_width=190,
            )
            health = gr.HTML(h.health_html(), elem_id="hc-health-box", padding=False, scale=0, min_width=140)
            who = gr.HTML("", elem_id="hc-user-box", padding=False, scale=0, min_width=80)
        chatbot = gr.Chatbot(
            elem_id="hc-chatbot",
            show_label=False,
            editable="user",
            buttons=["copy", "copy_all"],
            group_consecutive_messages=False,
            feedback_options=None,
            placeholder="Ask anything. Answers stream from the model you choose above.",
            height="60vh",
            min_height=260,
            autoscroll=True,
        )
        textbox = gr.Textbox(
            placeholder="Message hybrid-chat",
            label="Message",
            show_label=False,
            submit_btn=True,
            stop_btn=False,
            lines=1,
            max_lines=8,
            autofocus=True,
            elem_id="hc-input",
        )
        with gr.Accordion("Generation settings", open=False, elem_id="hc-settings"):
            with gr.Row():
                temperature = gr.Slider(0, 2, value=h.settings.temperature, step=0.05, label="Temperature")
                top_p = gr.Slider(0.01, 1, value=h.settings.top_p, step=0.01, label="Top p")
                max_tokens = gr.Slider(
                    1, 4096, value=min(h.settings.max_tokens, 4096), step=1, label="Max tokens"
                )
            system = gr.Textbox(value=h.settings.system_prompt, label="Persona (system prompt)", lines=2)
        timer = gr.Timer(20)

        gen_inputs = [model, temperature, top_p, max_tokens, system]
        turn_outputs = [chatbot, textbox, state, health]
        turn_kwargs: dict[str, Any] = {
            "api_visibility": "private",
            "concurrency_limit": TURN_CONCURRENCY,
            "show_progress": "minimal",
        }
        send_ev = textbox.submit(h.send, [textbox, state, *gen_inputs], turn_outputs, **turn_kwargs)
        retry_ev = chatbot.retry(h.regenerate, [state, *gen_inputs], turn_outputs, **turn_kwargs)
        edit_ev = chatbot.edit(h.edit_resend, [state, *gen_inputs], turn_outputs, **turn_kwargs)
        for ev in (send_ev, retry_ev, edit_ev):
            ev.then(h.after_turn, [state], [textbox, conv], api_visibility="private", show_progress="hidden")
        textbox.stop(
            h.stop,
            [state],
            [chatbot, conv],
            cancels=[send_ev, retry_ev, edit_ev],
            api_visibility="private",
            queue=False,
        )

        demo.load(h.on_load, None, [state, conv, more_btn, who, health], api_visibility="private")
        demo.load(None, js=CLOSE_SIDEBAR_ON_PHONE)
        conv.input(
            h.open_conversation,
            [conv, state],
            [chatbot, state, title_box],
            api_visibility="private",
            show_progress="minimal",
        )
        more_btn.click(h.more_conversations, [state], [conv, more_btn], api_visibility="private")
        new_btn.click(
            h.new_conversation,
            [state],
            [chatbot, state, conv, title_box],
            api_visibility="private",
            queue=False,
        )
        title_box.submit(h.rename, [title_box, state], [conv], api_visibility="private")
        delete_btn.click(
            h.arm_delete, [state], [delete_btn, confirm_btn], api_visibility="private", queue=False
        )
        confirm_btn.click(
            h.delete,
            [state],
            [chatbot, state, conv, more_btn, delete_btn, confirm_btn],
            api_visibility="private",
        )
        chatbot.clear(
            h.new_conversation,
            [state],
            [chatbot, state, conv, title_box],
            api_visibility="private",
            queue=False,
        )
        for trigger in (new_btn.click, conv.input):
            trigger(h.disarm_delete, None, [delete_btn, confirm_btn], api_visibility="private", queue=False)
            trigger(None, js=CLOSE_SIDEBAR_ON_PHONE)
        timer.tick(h.health_html, None, health, api_visibility="private", show_progress="hidden", queue=False)

        gr.api(
            h.chat,
            api_name="chat",
            concurrency_limit=TURN_CONCURRENCY,
        )
        gr.api(h.conversations, api_name="conversations")
        gr.api(h.conversation, api_name="conversation")
    demo.queue(default_concurrency_limit=h.settings.max_concurrent_streams)
    return demo
