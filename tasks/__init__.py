"""seqio Task and Mixture registrations; `import tasks` (or `import tasks` in a gin file) registers them all."""

from tasks import finetune, language_model, pretrain, seq2seq, superglue  # noqa: F401
