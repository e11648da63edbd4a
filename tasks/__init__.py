"""Pipeline stages: each module reads its inputs, calls franca_core (or img2dataset / Ray Train), writes
content-addressed outputs under ``<root>/<stage>/<input-digest>/`` and returns a ``StageResult``."""
