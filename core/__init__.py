"""loradex's core: the Task, Backbone and AdapterSpec interfaces, the data layer, training, the
multi-adapter model and prediction. It imports neither the registry nor any plugin."""
