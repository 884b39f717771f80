"""The Hugging Face Hub room: push and pull through huggingface_hub (:mod:`.client`) and the model
card a pushed version carries (:mod:`.card`)."""
