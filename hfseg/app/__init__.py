"""The web demo (`hfseg app`): a Gradio app over a saved model, and the Hugging Face Space that serves it.

Imports evaluation (inference, pictures, masks as `hfseg predict` writes them) and hub (card, Space files); nothing
in hfseg imports app, and gradio is imported only here (the optional extra `hfseg[app]`).
"""
