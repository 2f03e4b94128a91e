{
  # The node-gyp build (CPU only) for machines with a compiler but no cmake.
  # It reads the same source list as CMakeLists.txt (native/sources.json), so
  # the two builds cannot drift. Each instruction set's kernels are a static
  # library compiled with that ISA's flags only; the dispatcher in the core
  # picks one at load from the CPU's features.
  'variables': {
    'sk_version': '<!(node -p "require(\'./package.json\').version")',
    'sk_napi_include': '<!(node -p "require(\'node-addon-api\').include_dir")',
  },
  'target_defaults': {
    'include_dirs': ['native/include'],
    'defines': ['SPARSEKIT_VERSION="<(sk_version)"'],
    # node's common.gypi builds with -fno-exceptions -fno-rtti -std=gnu++17.
    'cflags!': ['-fno-exceptions', '-O2', '-O1', '-Os'],
    'cflags_cc!': ['-fno-exceptions', '-fno-rtti', '-std=gnu++17', '-std=gnu++20', '-std=c++20'],
    'cflags': ['-O3', '-fexceptions'],
    'cflags_cc': ['-std=c++17', '-fexceptions', '-Wall', '-Wextra', '-Wno-unused-parameter'],
    'xcode_settings': {
      'GCC_OPTIMIZATION_LEVEL': '3',
      'GCC_ENABLE_CPP_EXCEPTIONS': 'YES',
      'GCC_ENABLE_CPP_RTTI': 'YES',
      'CLANG_CXX_LANGUAGE_STANDARD': 'c++17',
      'MACOSX_DEPLOYMENT_TARGET': '11.0',
    },
    'msvs_settings': {
      'VCCLCompilerTool': {
        'ExceptionHandling': 1,
        'AdditionalOptions': ['/std:c++17', '/O2'],
      },
    },
  },
  'targets': [
    {
      'target_name': 'sparsekit',
      'sources': [
        '<!@(node -p "require(\'./native/sources.json\').core.join(\' \')")',
        '<!@(node -p "require(\'./native/sources.json\').bindings.join(\' \')")',
      ],
      'include_dirs': ['<(sk_napi_include)'],
      'defines': [
        'NAPI_VERSION=8',
        'NAPI_CPP_EXCEPTIONS',
        'NODE_ADDON_API_DISABLE_DEPRECATED',
      ],
      'conditions': [
        ['target_arch=="x64"', {
          'dependencies': ['sparsekit_avx2', 'sparsekit_avx512'],
        }],
        ['target_arch=="arm64"', {
          'dependencies': ['sparsekit_neon'],
        }],
        ['OS=="linux"', {
          # Same as the CMake build: keep the statically linked kernels'
          # symbols private and do not depend on the machine's libstdc++.
          'ldflags': ['-Wl,--exclude-libs,ALL', '-static-libstdc++', '-static-libgcc'],
          # dlopen of the optional CUDA plugin (native/src/common/cuda_plugin.cc).
          'libraries': ['-ldl'],
        }],
      ],
    },
  ],
  'conditions': [
    ['target_arch=="x64"', {
      'targets': [
        {
          'target_name': 'sparsekit_avx2',
          'type': 'static_library',
          'sources': ['<!@(node -p "require(\'./native/sources.json\').x86_avx2.join(\' \')")'],
          'cflags': ['-mavx2', '-mfma', '-mf16c'],
          'xcode_settings': { 'OTHER_CFLAGS': ['-mavx2', '-mfma', '-mf16c'] },
          'msvs_settings': { 'VCCLCompilerTool': { 'AdditionalOptions': ['/arch:AVX2'] } },
        },
        {
          'target_name': 'sparsekit_avx512',
          'type': 'static_library',
          'sources': ['<!@(node -p "require(\'./native/sources.json\').x86_avx512.join(\' \')")'],
          'cflags': ['-mavx512f', '-mavx512bw', '-mavx512dq', '-mavx512vl', '-mfma', '-mf16c'],
          'xcode_settings': {
            'OTHER_CFLAGS': ['-mavx512f', '-mavx512bw', '-mavx512dq', '-mavx512vl', '-mfma', '-mf16c'],
          },
          'msvs_settings': { 'VCCLCompilerTool': { 'AdditionalOptions': ['/arch:AVX512'] } },
        },
      ],
    }],
    ['target_arch=="arm64"', {
      'targets': [
        {
          # NEON is part of the arm64 baseline: no extra flags.
          'target_name': 'sparsekit_neon',
          'type': 'static_library',
          'sources': ['<!@(node -p "require(\'./native/sources.json\').arm64_neon.join(\' \')")'],
        },
      ],
    }],
  ],
}
