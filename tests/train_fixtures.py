"""Tiny real target sets for the trainer tests: a small teacher labels a synthetic corpus into shards."""
from __future__ import annotations

import numpy as np
import torch

from models.teacher import Teacher, TeacherConfig
from pipeline.corpora import load_corpus
from storage import Segments, TargetSetWriter, target_set_path
from storage.checkpoints import save_teacher
from storage.settings import ShardEncoding

CORPUS = "retrieval:T=16,vocab=8"


def tiny_teacher(seed: int = 0) -> Teacher:
    torch.manual_seed(seed)
    return Teacher(TeacherConfig(vocab_size=10, d_model=32, n_heads=2, encoder_depth=1, decoder_depth=1,
                                 mem_tokens=2)).eval()


def make_target_set(root: str, seed: int = 0, shards: int = 4, seqs: int = 16) -> dict:
    """Write <root>/teachers/<fp>/ and <root>/targets/<fp>/retrieval/ (round 0); returns their URLs."""
    teacher = tiny_teacher(seed)
    fp = save_teacher(f"{root}/teachers/tmp-{seed}", teacher)
    save_teacher(f"{root}/teachers/{fp}", teacher)
    corpus = load_corpus(CORPUS)
    targets = f"{root}/{target_set_path(fp, 'retrieval')}"
    rng = np.random.default_rng(seed)
    with TargetSetWriter(targets, teacher_fingerprint=fp, teacher_config=teacher.cfg.to_dict(),
                         corpus_id="retrieval", corpus_params={"spec": CORPUS}, encoding=ShardEncoding(dtype="float32")) as w:
        for i in range(shards):
            x, y = corpus.sample(seqs, rng)
            x, y = torch.as_tensor(x, dtype=torch.long), torch.as_tensor(y, dtype=torch.long)
            with torch.no_grad():
                m = teacher.encode_all(x)
            w.write_segments(i, Segments(states=m.numpy(), tokens=x.numpy(), y=y.numpy(),
                                         seq=np.arange(seqs) + i * seqs, pos0=np.zeros(seqs, dtype=np.int64)))
    return {"targets": targets, "teacher": f"{root}/teachers/{fp}", "fp": fp, "corpus": corpus,
            "teacher_model": teacher}
