"""The web layer: server start-up, the auth middleware, OAuth sign-in, the janitor, routes/ (REST and /v1)
and ui/ (Gradio only), with one error boundary (errors.py) for all of them."""
