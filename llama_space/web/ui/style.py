"""The app's CSS: a compact header, status markers in plain text colours, readable in dark mode and on phones."""

CSS = """
#app-header { align-items: center; flex-wrap: nowrap; gap: 8px; }
#app-title { min-width: 0; overflow: hidden; }
#app-title h2 { margin: 0; font-size: 1.25rem; display: flex; align-items: baseline; gap: 8px; min-width: 0;
  white-space: nowrap; }
#app-title .model-id { font-size: 0.8rem; font-weight: 400; font-family: var(--font-mono); opacity: 0.75;
  overflow: hidden; text-overflow: ellipsis; white-space: nowrap; min-width: 0; }
#lang-switch { flex: 0 0 auto !important; width: auto !important; }
#lang-switch .wrap { flex-wrap: nowrap; gap: 4px; }
#lang-switch label { padding: 2px 8px; }
.status-ok::before { content: "OK"; font-weight: 700; color: var(--color-green-600, #16a34a); margin-right: 6px; }
.status-error::before { content: "!"; font-weight: 700; color: var(--error-text-color, #dc2626); margin-right: 6px; }
.status-error, .job-error { color: var(--error-text-color, #b91c1c); }
.dark mark.trained, .dark .trained { background: #665c00 !important; color: #fff8c5 !important; }
#chat-header p { margin: 0; font-size: 0.85rem; opacity: 0.85; }
#chat-top { align-items: end; }
#chat-edit-hint p { font-size: 0.8rem; opacity: 0.7; margin: 0; }
#chat-versions { align-items: center; }
#chatbot .top-panel { display: none !important; }  /* the chatbot's own Clear: the New chat button is the one */
/* Phones: the chat first and short (the tab bar wraps instead of folding tabs into a menu: gr.Tabs). */
@media (max-width: 640px) {
  #chatbot { height: 42vh !important; min-height: 200px; }
  #chat-buttons { flex-wrap: wrap; gap: 4px; }  /* three buttons a line, each label on one line */
  #chat-buttons button { min-width: 0 !important; flex: 1 1 30% !important; white-space: nowrap; padding: 4px 6px;
    font-size: 0.85rem; }
  #app-title h2 { font-size: 1.05rem; }
  #chat-edit-hint { display: none; }
}
"""
