"""The sagecast forecaster on a SAGE node, without torch: onnxruntime, numpy, Pillow, astral and pywaggle.

    sagecast-edge --model runs/edge --source dir --raw runs/raw        # replay a raw folder
    sagecast-edge --model /model --source subscribe                    # on the node: the scanner's uploads

`model` checks and runs an exported model folder (sagecast-edge-export), `preprocess` turns files into frames
exactly as data.prepare does, `scans` groups captures into scans, `app` keeps the context and publishes,
`subscribe` turns the scanner's upload messages into scans. Nothing here imports torch or a training module.
"""
