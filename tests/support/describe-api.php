<?php
/**
 * Reflection of functions and classes as plain data, so the stubs (loaded in a PHP without the
 * extension) and the extension itself can be compared.
 */

declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

function describe_api(array $functions, array $classes): array
{
    $type = fn (?\ReflectionType $t) => $t === null ? null : (string) $t;
    $out = ['functions' => [], 'classes' => []];
    foreach ($functions as $name) {
        $f = new \ReflectionFunction($name);
        $params = [];
        foreach ($f->getParameters() as $p) {
            $params[] = [
                'name' => $p->getName(),
                'type' => $type($p->getType()),
                'optional' => $p->isOptional(),
                'default' => $p->isDefaultValueAvailable() ? var_export($p->getDefaultValue(), true) : null,
            ];
        }
        $out['functions'][strtolower($f->getName())] = ['params' => $params, 'return' => $type($f->getReturnType())];
    }
    foreach ($classes as $name) {
        $c = new \ReflectionClass($name);
        $out['classes'][$c->getName()] = [
            'parent' => $c->getParentClass() ? $c->getParentClass()->getName() : null,
            'final' => $c->isFinal(),
            'constants' => $c->getConstants(),
        ];
    }
    ksort($out['functions']);
    ksort($out['classes']);
    return $out;
}

if (PHP_SAPI === 'cli' && realpath($_SERVER['SCRIPT_FILENAME'] ?? '') === __FILE__) {
    // Usage: php describe-api.php STUBS_FILE  (prints the stubs' API as JSON)
    require $argv[1];
    $functions = array_values(array_filter(
        get_defined_functions()['user'],
        fn ($n) => str_starts_with($n, 'matomo\\archiveclaim\\') && !str_starts_with($n, 'matomo\\archiveclaim\\tests\\')
    ));
    $classes = array_values(array_filter(
        get_declared_classes(),
        fn ($n) => str_starts_with($n, 'Matomo\\ArchiveClaim\\') && !str_starts_with($n, 'Matomo\\ArchiveClaim\\Tests\\')
    ));
    echo json_encode(describe_api($functions, $classes));
}
