"""The actions users take (validate data, train, cancel, resume, list, delete, download and push adapters)
and who may take them; no Gradio here: the UI, the Gradio API and the REST routes all call this layer."""
