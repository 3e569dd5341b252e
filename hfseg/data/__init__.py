"""Data: sources to decoded, label-encoded, augmented batches.

Owns the adapters (Hub ids, datasets folders, native layouts -> image/mask rows), `LabelSpec` (what a mask value
means), the embedded synthetic set, `hfseg doctor`, lazy preprocessing, joint image/mask transforms, collate and
per-sample seeds. Never imports model, training or evaluation code, and of the Hub only the network edge
(`hfseg.hub.network`): a pixel's meaning is settled here.
"""
