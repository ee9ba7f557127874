from setuptools import setup

setup(
    name="fmq",
    version="0.1.0",
    description="An HTTP front for a backend reached through a message broker",
    python_requires=">=3.11",
    packages=["fmq", "fmq.brokers", "twisted.plugins"],
    package_dir={"twisted.plugins": "twisted_plugins"},
    package_data={"fmq": ["configspec.ini"]},
    install_requires=[
        "Twisted>=24.3",
        "klein>=24.8",
        "configobj>=5.0.9",
        "attrs>=23.1",
        "zope.interface>=6",
        "prometheus_client>=0.20",
        "psutil>=5.9",
        "pika>=1.3",
    ],
    entry_points={
        "console_scripts": [
            "fmq-backend = fmq.backend:main",
            "fmq-loadtest = fmq.loadtest:main",
        ]
    },
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "treq>=24.9",
            "hypothesis>=6.100",
            "ruff>=0.6",
            "mypy>=1.10",
            "mypy-zope>=1.0",
        ],
        "bench": ["matplotlib>=3.7"],
    },
)
