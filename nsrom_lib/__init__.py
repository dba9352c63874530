"""nsrom_lib: the library behind the NSROM notebooks.

Non-Salient Region Object Mining for Weakly Supervised Semantic Segmentation
(Yao et al., CVPR 2021), reproduced step by step. Importing the package is cheap:
torch is only imported by the modules that need it.
"""

__version__ = "0.1.0"
