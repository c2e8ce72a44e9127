from setuptools import find_packages, setup

about = {}
with open('pytorch_lightning/utilities/_version.py') as f:
    exec(f.read(), about)

setup(
    name='pytorch_lightning',
    version=about['__version__'],
    description='A small, fast training loop for PyTorch research: write the science, '
                'the Trainer does the rest.',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    packages=find_packages(include=['pytorch_lightning', 'pytorch_lightning.*']),
    python_requires='>=3.9',
    install_requires=['torch>=2.3', 'numpy', 'tqdm', 'test-tube>=0.7.5', 'cloudpickle>=2.0'],
    extras_require={
        'test': ['pytest', 'scikit-learn', 'matplotlib'],
        'examples': ['scikit-learn'],
        'plot': ['matplotlib'],  # pytorch_lightning.notebook.plot
    },
)
