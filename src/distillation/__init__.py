"""Knowledge-distillation losses and the distillation objective."""
