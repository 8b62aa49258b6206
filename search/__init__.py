"""Search: space files, the Ray Tune search, resume, retraining (commands: run.py, retrain.py, teacher.py, demo.py)."""
