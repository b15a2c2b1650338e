"""Evaluation of frozen backbones (Gröger et al.: kNN few-shot curves, linear probe, baselines).

Modules: `models` (resolve --model), `embed` + `embeddings` (features in HDF5), `fewshot` (support sets),
`knn`, `probe`, `baselines` (stratified random), `metrics`, `results` (the result-file schema).
"""
