"""The classes this project trains, in the models' output order. The library does not import
this: it reads a model's classes from its metadata (``xray_infer.spec.ModelSpec``)."""
CLASS_NAMES = ("normal", "bacterial", "viral")
NUM_CLASSES = len(CLASS_NAMES)
