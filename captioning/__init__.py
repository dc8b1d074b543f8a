"""Dense re-captioning of accepted clips: prompts, text gates and budget, backends, the stage, resume store."""
