"""Applying a trained model to new scans: the model bundle, the per-subject apply in native space, the folder's
summary and the native-versus-template agreement check. Nothing else in the package imports it (data flow:
it reads every earlier stage's functions and models, and nothing reads it). No re-exports: scripts import the
concrete modules, whose imports are the rules' code inputs."""
