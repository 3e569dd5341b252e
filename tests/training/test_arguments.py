"""SegTrainingArguments' segmentation defaults."""

import torch

from hfseg.training.arguments import SegTrainingArguments


def test_workers_persist_when_there_are_workers(tmp_path):
    """Workers stay alive between epochs by default (their start-up is paid once); with no worker the flag is
    turned off rather than handed to a DataLoader that refuses it."""
    with_workers = SegTrainingArguments(output_dir=str(tmp_path), dataloader_num_workers=2)
    assert with_workers.dataloader_persistent_workers is True
    without = SegTrainingArguments(output_dir=str(tmp_path), dataloader_num_workers=0)
    assert without.dataloader_persistent_workers is False
    torch.utils.data.DataLoader(range(4), num_workers=0, persistent_workers=without.dataloader_persistent_workers)
    opted_out = SegTrainingArguments(
        output_dir=str(tmp_path), dataloader_num_workers=2, dataloader_persistent_workers=False
    )
    assert opted_out.dataloader_persistent_workers is False
