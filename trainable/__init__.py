"""Everything that runs on a tensor: teachers, inventory, cheap ops, surgery, distillation, evaluation."""
