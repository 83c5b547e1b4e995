"""The in-silico study (``xray2xray study``): does the world model's volumetric context beat
2D learning on a synthetic cohort whose 3D truth is known?

Four methods share one encoder architecture and a matched compute budget - a supervised
encoder trained from scratch on frontal DRRs, a masked autoencoder pretrained on frontal
DRRs, the Xray2Xray world model pretrained on the CTs, and an oracle on the true 3D
quantities - and go through the same linear probes at each label fraction.

* :mod:`.config`      - :class:`StudyConfig` from a JSON preset or file, with overrides;
* :mod:`.data`        - the cohort, split, labelled subsets and DRRs;
* :mod:`.baselines`   - the supervised and masked-autoencoder arms;
* :mod:`.world_model` - the Xray2Xray arm, its novel views and volume;
* :mod:`.oracle`      - features from the true 3D quantities;
* :mod:`.probes`      - heads, metrics with bootstrap CIs, paired comparisons;
* :mod:`.figures`, :mod:`.report` - ROC and view figures, ``results.md``;
* :mod:`.run`         - :func:`run_study`, the whole pipeline;
* :mod:`.cli`         - the ``study`` subcommand.

Names are imported lazily (:mod:`XrayWorldModel.lazy`): building the command line imports
none of the study's modules, which pull in torch.
"""
from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), {
    "config": ["METHODS", "StudyConfig", "load_study_config"],
    "run": ["run_study"],
})
