"""flstack's own side of the app API: what its child processes run, not for apps.

The training child (``flclientd.worker``) and the model-init child that the
server starts (``python -m flapp.runtime.modelinit``) share this code: they
build an app's components from config_train.json and move state dicts in
and out of safetensors files, so every model file of a run has the tensor
names, dtypes and shapes of the model that made it; and both end without
tearing down torch (:mod:`flapp.runtime.leave`). Apps import
:mod:`flapp`; names here may change between releases.
"""
