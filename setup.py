from setuptools import setup

setup(
    name="fmq",
    version="0.1.0",
    description="An HTTP front for a backend reached through a message broker",
    python_requires=">=3.9",
    packages=["fmq", "fmq.brokers", "fmq.tools", "twisted.plugins"],
    package_dir={"twisted.plugins": "twisted_plugins"},
    package_data={"fmq": ["configspec.ini", "static/*"]},
    install_requires=[
        "Twisted>=24.3",
        "klein>=24.8",
        "configobj>=5.0.9",
        "attrs>=23.1",
        "zope.interface>=6",
        "prometheus_client>=0.20",
        # psutil 7.1.3 and later build on PyPy 3.9 but fail to import there
        "psutil>=5.9; platform_python_implementation != 'PyPy'",
        "psutil>=5.9,<=7.1.2; platform_python_implementation == 'PyPy'",
        "pika>=1.3",
        # [fleet] registry: Redis. txredisapi requires Twisted's TLS extra,
        # which cannot be built on PyPy 3.9 (cryptography 45+ needs Rust);
        # there scripts/_venv.sh installs it with --no-deps, and these, from
        # wheels, are what its import of twisted.internet.ssl needs.
        "txredisapi>=1.4.10; platform_python_implementation != 'PyPy'",
        "pyOpenSSL>=24,<25; platform_python_implementation == 'PyPy'",
        "cryptography>=42,<44; platform_python_implementation == 'PyPy'",
        "service_identity>=18.1; platform_python_implementation == 'PyPy'",
    ],
    entry_points={
        "console_scripts": [
            "fmq-backend = fmq.tools.backend:main",
            "fmq-loadtest = fmq.tools.loadtest:main",
        ]
    },
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            # treq needs Twisted's TLS extra, which cannot be built on PyPy 3.9
            # (cryptography needs Rust crates); there scripts/_venv.sh installs
            # treq with --no-deps, and these are its other requirements.
            "treq>=24.9; platform_python_implementation != 'PyPy'",
            "requests>=2.1.0; platform_python_implementation == 'PyPy'",
            "multipart>=1.0; platform_python_implementation == 'PyPy'",
            "typing_extensions>=3.10.0; platform_python_implementation == 'PyPy'",
            "hypothesis>=6.100",
            "ruff>=0.6",
            # 1.19 dropped checking against Python 3.9, which fmq supports
            "mypy>=1.10,<1.19",
            "mypy-zope>=1.0",
        ],
        "bench": ["matplotlib>=3.7"],
    },
)
