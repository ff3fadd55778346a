"""`smt export`: write a run's student as a self-contained folder: weights (safetensors: updater, readout, m_0),
a config JSON and how its tokens read, loadable with `storage.export.load_exported(DIR)` and by
`smt generate --run DIR`. RUN is what `smt eval --run` takes (the newest checkpoint of a run, or --step N).
Example: smt export --run runs/text/student --out exported/text-student
"""
from __future__ import annotations

from dataclasses import dataclass

from jobs.cli_common import job_main
from storage.settings import AtEndpoint


@dataclass(kw_only=True)
class ExportJob(AtEndpoint):
    run: str
    """Run folder/URL or student checkpoint folder to export the student of."""
    out: str
    """The folder to write (must not hold a checkpoint already)."""
    step: int | None = None
    """Runs with checkpoints: the student of this step (default: newest)."""
    corpus: str | None = None
    """Corpus spec saying how tokens read (default: the one the run records, or its models do)."""

    def execute(self) -> int:
        from jobs.eval import resolve_run
        from jobs.generate import load_model, model_vocab, recorded_corpus
        from pipeline.corpora import token_format
        from storage.export import export_student

        ep = self.endpoint_url
        t_url, s_url = resolve_run(self.run, self.step, None, ep)
        if s_url is None:
            raise ValueError(f"{self.run} holds a teacher and no student (updater + readout + m_0) to export: pass a "
                             "run that trained a student (smt pretrain, train, dmt, dmt-online, bptt, pipeline)")
        spec = self.corpus or recorded_corpus(self.run, [u for u in (s_url, t_url) if u], ep)
        if spec is None:
            raise ValueError(f"no corpus is recorded with the models of {self.run}, so how its tokens read is unknown: "
                             "pass --corpus SPEC (the corpus it was trained on)")
        fmt = token_format(spec, model_vocab(s_url, ep))
        student, meta = load_model(s_url, "student", fmt, ep)
        source = {"run": self.run, "student": s_url, "trained_by": meta.get("trained_by"),
                  **({"step": meta["step"]} if "step" in meta else {})}
        fp = export_student(student, self.out, fmt, meta.get("teacher_fingerprint"), source, ep)
        print(f"exported the {meta.get('trained_by') or ''} student ({student.updater_cfg.arch} updater, "
              f"{sum(p.numel() for p in student.parameters()):,} parameters, {fmt.unit}s, vocabulary "
              f"{fmt.vocab_size}) of {s_url} to {self.out} (fingerprint {fp[:12]})")
        return 0


main = job_main("export", ExportJob, __doc__)

if __name__ == "__main__":
    raise SystemExit(main())
