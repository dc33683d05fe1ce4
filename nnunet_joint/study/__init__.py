"""The study that ``nnunet_joint_reproduce`` runs, one file per part of it.

* :mod:`.folder`: the run folder, nnU-Net's variables pointing at it, and the markers of finished data steps;
* :mod:`.profiles`: the profiles (folds, phantom, encoder, rows) and their training budgets;
* :mod:`.matrix`: the experiment matrix (framework x initialisation x schedule x dataset) and the papers'
  comparisons;
* :mod:`.data`: the data steps (phantom, LiTS datasets 501/502, Sheba datasets 503/504);
* :mod:`.training`: one nnU-Net training (:class:`~.training.Training`) and its resume rules;
* :mod:`.cropping`: the crops step (the Sheba slices cut by stage 1, or by their reference masks);
* :mod:`.reporting`: the report step, and each row's outcome (ran, not in this profile, needs ImageNet
  weights, failed);
* :mod:`.steps`: the :class:`~.steps.Study` and the step graph it describes, in priority order;
* :mod:`.graph`: the step graph, the local executor and the progress lines;
* :mod:`.slurm`: the SLURM executor (one job per step) and the plain job list;
* :mod:`.cli`: the command line.

Nothing is imported here, so that the light parts (the matrix, the profiles) load without torch.
"""
