"""Neural networks shared by methods and evaluators (ported or trained here)."""
