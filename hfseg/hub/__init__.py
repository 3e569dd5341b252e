"""The Hugging Face Hub: the model card built from a run's saved files, `hfseg push`, and the network edge.

The card is built from files on disk, never from a live Trainer; nothing outside this folder talks to the Hub
except through `hfseg.hub.network`.
"""
