"""Dataset hygiene for stage 3 (dedup): content hashes, perceptual signatures, ANN near-duplicate search,
decontamination against evaluation sets, payload classification and the dataset digest.

Pure numpy / OpenCV / Pillow / faiss; no Prefect, Ray or MLflow (``tasks/dedup.py`` drives it).
"""
