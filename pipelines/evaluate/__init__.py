"""The evaluate stage: a concept's metrics for the promotion gate, and sample pictures.

No Ray or MLflow here: the job calls these functions and logs what they return.
    `heldout`    each task's held-out check (`omnipersona.tasks`) on the ingest epoch held out of training
    `benchmark`  the OmniPBench-style harness (`omnipersona.evaluation`) on the concept's eval set, with
                 the eval-set reader and picture judge the job config names (plug-ins)
    `features`   real image embedders (CLIP, DINO, faces) for the feature cosines
    `gate`       the promotion gate
Import from the modules: this package file imports nothing, so reading a job config (which holds a
`Gate`) never pulls in torch.
"""
