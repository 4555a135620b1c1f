"""Held-out evaluation of personalised concepts (OmniPBench-style metrics) and the promotion gate.

No Ray or MLflow here: the job's evaluate stage calls these functions and logs what they return.
Import from the modules (`pipelines.evaluate.gate`, `.harness`, `.heldout`, `.metrics`): this
package file imports nothing, so reading a job config (which holds a `Gate`) never pulls in torch.
"""
