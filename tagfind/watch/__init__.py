"""`tagfind watch`: a live poolmon-like view with the Driver column from the index.

model.py owns the state and the keys (no drawing), keys.py reads keys from the terminal,
screen.py draws the model with Rich and runs the refresh loop.
"""
