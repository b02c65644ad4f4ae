<?php
/**
 * Whether the running Matomo's Piwik\DataAccess\Model is the one ClaimingModel was written for,
 * decided WITHOUT loading ClaimingModel.
 *
 * Why: ClaimingModel extends Matomo's Model. If a Matomo release changes the signature of a
 * method it overrides (a return type added, a parameter added or typed, a method made final),
 * PHP stops with a fatal error the moment ClaimingModel is declared, and core:archive on every
 * server stops with it. A fatal error at class declaration cannot be caught, so the only safe
 * test is one that never declares the subclass: reflection on Matomo's own class, compared
 * with the signatures recorded here.
 *
 * The comparison is exact (not PHP's variance rules): a new optional parameter, a changed
 * default or a new type in the parent may be harmless to PHP and still mean that Matomo now
 * passes or expects something our override does not know about. Stepping aside costs only
 * what Matomo alone does; a wrong guess costs archiving.
 *
 * Kept free of Matomo classes so it runs anywhere (the unit test loads it beside a bare copy of
 * Matomo's Model.php).
 */

declare(strict_types=1);

namespace Piwik\Plugins\ArchiveClaim\Lib;

final class ModelCompatibility
{
    public const PARENT = 'Piwik\DataAccess\Model';

    /**
     * For each method ClaimingModel declares that overrides (or may override) Matomo's: the
     * parent signatures it was written for, rendered by signature(). null: the parent may lack
     * the method (it then overrides nothing).
     *
     * Matomo 5.0-5.2 (seen in 5.2.0-b5): all but releaseInProgressInvalidations. 5.3 adds
     * releaseInProgressInvalidations(ids); its exact declaration is not available offline, so
     * the two forms our untyped override stays compatible with are accepted.
     */
    public const EXPECTED = [
        '__construct' => ['public __construct(?Piwik\Log\LoggerInterface $logger = NULL)'],
        'startArchive' => ['public startArchive($invalidation)'],
        'releaseInProgressInvalidation' => ['public releaseInProgressInvalidation($idinvalidation)', null],
        'releaseInProgressInvalidations' => [null, 'public releaseInProgressInvalidations($idinvalidations)',
            'public releaseInProgressInvalidations(array $idinvalidations)'],
        'deleteInvalidations' => ['public deleteInvalidations($archiveInvalidations)'],
        'resetFailedArchivingJobs' => ['public resetFailedArchivingJobs()'],
    ];

    /**
     * ClaimingModel's private members. A parent that gains a non-private member of one of
     * these names makes the subclass fatal too ("Access level ... must be public").
     */
    public const OWN_METHODS = ['takeOver', 'releaseOurs', 'forget'];
    public const OWN_PROPERTIES = ['ours', 'log', 'started'];

    /** @var array<string, list<array{method: string, found: ?string, expected: list<?string>}>> per parent class, this process */
    private static array $cache = [];

    /**
     * What keeps ClaimingModel from being declared safely on top of $parent; empty: compatible.
     * Loads $parent (Matomo's own class) through the autoloader, never ClaimingModel.
     *
     * @return list<array{method: string, found: ?string, expected: list<?string>}>
     */
    public static function problems(string $parent = self::PARENT): array
    {
        if (isset(self::$cache[$parent])) {
            return self::$cache[$parent];
        }
        $problems = [];
        try {
            $class = new \ReflectionClass($parent);
        } catch (\ReflectionException $e) {
            return self::$cache[$parent] = [['method' => '(class)', 'found' => null, 'expected' => ['class ' . $parent]]];
        }
        if ($class->isFinal() || $class->isInterface() || $class->isTrait() || $class->isAbstract()) {
            $problems[] = ['method' => '(class)', 'found' => self::classKind($class) . ' ' . $parent, 'expected' => ['class ' . $parent]];
        }
        foreach (self::EXPECTED as $name => $accepted) {
            $found = $class->hasMethod($name) ? self::signature($class->getMethod($name)) : null;
            // A private method of the parent is invisible to the child: the same as none.
            if ($class->hasMethod($name) && $class->getMethod($name)->isPrivate() && !$class->getMethod($name)->isFinal()) {
                $found = null;
            }
            if (!in_array($found, $accepted, true)) {
                $problems[] = ['method' => $name, 'found' => $found, 'expected' => $accepted];
            }
        }
        foreach (self::OWN_METHODS as $name) {
            if ($class->hasMethod($name) && !$class->getMethod($name)->isPrivate()) {
                $problems[] = ['method' => $name, 'found' => self::signature($class->getMethod($name)), 'expected' => [null]];
            }
        }
        foreach (self::OWN_PROPERTIES as $name) {
            if ($class->hasProperty($name) && !$class->getProperty($name)->isPrivate()) {
                $problems[] = ['method' => '$' . $name, 'found' => 'a non-private property $' . $name, 'expected' => [null]];
            }
        }
        return self::$cache[$parent] = $problems;
    }

    public static function compatible(string $parent = self::PARENT): bool
    {
        return self::problems($parent) === [];
    }

    /** The method names (or properties) at fault, for a short message: "startArchive(), releaseInProgressInvalidation()". */
    public static function names(array $problems): string
    {
        return implode(', ', array_map(fn ($p) => str_starts_with($p['method'], '$') || $p['method'] === '(class)'
            ? $p['method'] : $p['method'] . '()', $problems));
    }

    /** One sentence per problem: what Matomo has now, and what the plugin was written for. */
    public static function describe(array $problems): string
    {
        $parts = [];
        foreach ($problems as $p) {
            $expected = array_map(fn ($e) => $e ?? '(no such method)', $p['expected']);
            if ($p['expected'] === [null]) {
                $parts[] = sprintf('Matomo\'s Model now has %s, which the plugin declares privately', $p['found']);
            } else {
                $parts[] = sprintf('%s is %s in Matomo\'s Model; the plugin was written for %s', $p['method'],
                    $p['found'] ?? '(missing)', implode(' or ', $expected));
            }
        }
        return implode('; ', $parts);
    }

    /** The NOTICE core:archive logs, and the System Check's text. */
    public static function message(array $problems): string
    {
        return 'ArchiveClaim: this Matomo\'s ' . self::PARENT . ' is not the one the plugin was written for ('
            . self::describe($problems) . '). The plugin steps aside: core:archive uses Matomo\'s own Model, claims are Matomo\'s own, '
            . 'and orphaned invalidations wait for archive_failure_recovery_timeout. Update the ArchiveClaim plugin to a version '
            . 'made for this Matomo.';
    }

    /**
     * A method's declaration as written, without its body or doc comment:
     * "[final ][static ]public name(?Type $a = NULL, &$b, ...$c): ReturnType".
     */
    public static function signature(\ReflectionMethod $m): string
    {
        $mods = [];
        if ($m->isFinal()) {
            $mods[] = 'final';
        }
        if ($m->isAbstract()) {
            $mods[] = 'abstract';
        }
        if ($m->isStatic()) {
            $mods[] = 'static';
        }
        $mods[] = $m->isPublic() ? 'public' : ($m->isProtected() ? 'protected' : 'private');
        $params = [];
        foreach ($m->getParameters() as $p) {
            $s = $p->hasType() ? self::type($p->getType()) . ' ' : '';
            $s .= ($p->isPassedByReference() ? '&' : '') . ($p->isVariadic() ? '...' : '') . '$' . $p->getName();
            if ($p->isDefaultValueAvailable()) {
                $s .= ' = ' . ($p->isDefaultValueConstant() ? $p->getDefaultValueConstantName() : var_export($p->getDefaultValue(), true));
            }
            $params[] = $s;
        }
        $return = $m->hasReturnType() ? ': ' . self::type($m->getReturnType())
            : ($m->hasTentativeReturnType() ? ': ' . self::type($m->getTentativeReturnType()) : '');
        return implode(' ', $mods) . ' ' . $m->getName() . '(' . implode(', ', $params) . ')' . $return;
    }

    private static function type(\ReflectionType $t): string
    {
        // ReflectionType's string is canonical ("?Foo", "A|B", "A&B"); class names are not loaded.
        return (string) $t;
    }

    private static function classKind(\ReflectionClass $c): string
    {
        return $c->isInterface() ? 'interface' : ($c->isTrait() ? 'trait' : ($c->isFinal() ? 'final class' : 'abstract class'));
    }
}
