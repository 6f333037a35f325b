"""Names of the tensors that travel between pipeline stages, per micro-batch.

Forward, stage s -> s+1 (each [rows, length, width] of the micro-batch's rows):
    HIDDEN          h of the stage's last layer (backbone width d), when the next stage goes on in the same stack
    ENCODER_HIDDEN  the backbone encoder's final state (d), for every stage that runs decoder layers
    SIDE            a of the stage's last side block (side width r)
    SIDE_MEMORY     the side encoder's final a (r), which the side decoder's blocks cross-attend to
Backward, stage s+1 -> s: the gradients of SIDE and SIDE_MEMORY only (width r), under the same names.
"""

HIDDEN = "hidden"
ENCODER_HIDDEN = "encoder_hidden"
SIDE = "side"
SIDE_MEMORY = "side_memory"

FORWARD = (HIDDEN, ENCODER_HIDDEN, SIDE, SIDE_MEMORY)
BACKWARD = (SIDE, SIDE_MEMORY)  # the only tensors that need a gradient: the backbone has none
