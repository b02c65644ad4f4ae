<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

use PHPUnit\Framework\TestCase;

require_once dirname(__DIR__, 2) . '/php/ArchiveClaim/Lib/ModelCompatibility.php';

/**
 * The plugin must never be the reason archiving stops. ClaimingModel extends Matomo's
 * Piwik\DataAccess\Model; a Matomo release that changes the signature of a method it overrides
 * would make declaring it a fatal error, in every core:archive. Lib\ModelCompatibility decides
 * from Matomo's own class, by reflection, whether ClaimingModel may be declared; config/config.php
 * hands it out only then.
 *
 * These tests are unit-level: a bare copy of the real Matomo 5.2 Model.php (taken from
 * ../shared/matomo's tarball) and edited copies of it, each loaded in a fresh PHP with nothing
 * of Matomo but that file. For each edit the check must step aside, and (for edits PHP itself
 * rejects) declaring ClaimingModel on that Model must really be fatal, so the check is not
 * crying wolf. The real installation with a changed Model is in MatomoUpgradeTest.
 */
final class UpgradeSafetyTest extends TestCase
{
    private static ?string $dir = null;

    public static function setUpBeforeClass(): void
    {
        $shared = RealMatomo::sharedDir();
        if ($shared === null) {
            return;
        }
        self::$dir = sys_get_temp_dir() . '/matomo-archive-claim-upgrade.' . getmypid();
        @mkdir(self::$dir, 0777, true);
        exec('tar -xJf ' . escapeshellarg("$shared/matomo-5.2.0-b5.tar.xz") . ' -C ' . escapeshellarg(self::$dir)
            . ' matomo/core/DataAccess/Model.php 2>&1', $out, $code);
        if ($code !== 0) {
            throw new \RuntimeException('cannot extract Model.php: ' . implode("\n", $out));
        }
    }

    public static function tearDownAfterClass(): void
    {
        if (self::$dir !== null) {
            exec('rm -rf ' . escapeshellarg(self::$dir));
        }
    }

    protected function setUp(): void
    {
        if (self::$dir === null) {
            $this->markTestSkipped('no real Matomo: ' . dirname(__DIR__, 3) . '/shared/matomo is not beside the repository');
        }
    }

    private static function model52(): string
    {
        return (string) file_get_contents(self::$dir . '/matomo/core/DataAccess/Model.php');
    }

    /**
     * Runs, in a PHP of its own, the check against $modelSource and (if $declare) then declares
     * ClaimingModel on top of it.
     *
     * @return array{code: int, out: string, problems: ?array}
     */
    private function probe(string $modelSource, bool $declare): array
    {
        $model = tempnam(self::$dir, 'Model') . '.php';
        file_put_contents($model, $modelSource);
        $lib = dirname(__DIR__, 2) . '/php/ArchiveClaim';
        $script = '<?php require ' . var_export($model, true) . '; require ' . var_export("$lib/Lib/ModelCompatibility.php", true) . ';'
            . ' echo json_encode(Piwik\Plugins\ArchiveClaim\Lib\ModelCompatibility::problems()), "\n";'
            . ($declare ? ' require ' . var_export("$lib/ClaimingModel.php", true) . '; echo "declared\n";'
                . ' $c = new ReflectionClass("Piwik\Plugins\ArchiveClaim\ClaimingModel");'
                . ' $own = []; foreach ($c->getMethods() as $m) { if ($m->class === $c->name) { $own[] = $m->name; } }'
                . ' $props = []; foreach ($c->getProperties() as $p) { if ($p->class === $c->name) { $props[$p->name] = $p->isPrivate(); } }'
                . ' echo json_encode(["methods" => $own, "properties" => $props]), "\n";' : '');
        $file = tempnam(self::$dir, 'probe') . '.php';
        file_put_contents($file, $script);
        [$code, $out] = RealMatomo::run([PHP_BINARY, '-n', '-d', 'display_errors=stderr', $file], ['PATH' => getenv('PATH')]);
        $lines = explode("\n", $out);
        return ['code' => $code, 'out' => $out, 'problems' => json_decode($lines[0], true), 'members' => json_decode($lines[2] ?? 'null', true)];
    }

    public function testTheCheckSaysCompatibleForTheRealMatomo52Model(): void
    {
        $r = $this->probe(self::model52(), true);
        $this->assertSame([], $r['problems'], $r['out']);
        $this->assertSame(0, $r['code'], $r['out']);
        $this->assertStringContainsString('declared', $r['out']);

        // The recorded list covers every member ClaimingModel declares: a new override added to
        // ClaimingModel without recording the signature it was written for fails here.
        $recorded = array_merge(array_keys(\Piwik\Plugins\ArchiveClaim\Lib\ModelCompatibility::EXPECTED),
            \Piwik\Plugins\ArchiveClaim\Lib\ModelCompatibility::OWN_METHODS);
        $methods = $r['members']['methods'];
        sort($methods);
        sort($recorded);
        $this->assertSame($recorded, $methods, 'ModelCompatibility::EXPECTED + OWN_METHODS must list exactly the methods ClaimingModel declares');
        $own = \Piwik\Plugins\ArchiveClaim\Lib\ModelCompatibility::OWN_PROPERTIES;
        $props = array_keys($r['members']['properties']);
        sort($own);
        sort($props);
        $this->assertSame($own, $props, 'OWN_PROPERTIES must list ClaimingModel\'s properties');
        $this->assertNotContains(false, $r['members']['properties'], 'ClaimingModel\'s properties are private');
    }

    /** @return array<string, array{0: string, 1: string, 2: string, 3: bool}> edit: search, replace, the member named, fatal in PHP */
    public static function edits(): array
    {
        return [
            'a return type on startArchive' => ['public function startArchive($invalidation)',
                'public function startArchive($invalidation): bool', 'startArchive()', true],
            'a new optional parameter of deleteInvalidations' => ['public function deleteInvalidations($archiveInvalidations)',
                'public function deleteInvalidations($archiveInvalidations, $force = false)', 'deleteInvalidations()', true],
            'resetFailedArchivingJobs made final' => ['public function resetFailedArchivingJobs()',
                'final public function resetFailedArchivingJobs()', 'resetFailedArchivingJobs()', true],
            'a 5.3-style releaseInProgressInvalidations with a return type' => ['public function resetFailedArchivingJobs()',
                "public function releaseInProgressInvalidations(array \$ids): int\n    {\n        return 0;\n    }\n\n    public function resetFailedArchivingJobs()",
                'releaseInProgressInvalidations()', true],
            'a public method named like a private one of ours' => ['public function resetFailedArchivingJobs()',
                "public function forget(array \$ids): void\n    {\n    }\n\n    public function resetFailedArchivingJobs()", 'forget()', true],
            'a protected property named like ours' => ['private $logger;', "private \$logger;\n    protected \$log;", '$log', true],
            'the class made final' => ["\nclass Model\n", "\nfinal class Model\n", '(class)', true],
            // PHP accepts this one (a child may take wider parameters), but Matomo now relies on
            // something the override was not written for: step aside all the same.
            'a typed parameter of startArchive' => ['public function startArchive($invalidation)',
                'public function startArchive(array $invalidation)', 'startArchive()', false],
            'startArchive gone' => ['public function startArchive($invalidation)', 'public function startArchiveRenamed($invalidation)',
                'startArchive()', false],
        ];
    }

    /** @dataProvider edits */
    public function testAChangedModelMakesThePluginStepAside(string $search, string $replace, string $member, bool $fatal): void
    {
        $source = self::model52();
        $this->assertSame(1, substr_count($source, $search), "the edit's anchor is in Model.php once: $search");
        $r = $this->probe(str_replace($search, $replace, $source), true);
        $this->assertNotEmpty($r['problems'], "the check must step aside:\n" . $r['out']);
        $this->assertStringContainsString($member, \Piwik\Plugins\ArchiveClaim\Lib\ModelCompatibility::names($r['problems']));
        if ($fatal) {
            // What config/config.php now avoids: declaring ClaimingModel here kills the process.
            $this->assertSame(255, $r['code'], $r['out']);
            $this->assertStringContainsString('Fatal error', $r['out']);
        } else {
            $this->assertSame(0, $r['code'], $r['out']);
        }
    }

    public function testTheNoticeNamesTheMethodAndWhatItWasWrittenFor(): void
    {
        $r = $this->probe(str_replace('public function startArchive($invalidation)', 'public function startArchive($invalidation): bool',
            self::model52()), false);
        $message = \Piwik\Plugins\ArchiveClaim\Lib\ModelCompatibility::message($r['problems']);
        $this->assertStringContainsString('startArchive is public startArchive($invalidation): bool in Matomo\'s Model; '
            . 'the plugin was written for public startArchive($invalidation)', $message);
        $this->assertStringContainsString('steps aside', $message);
    }
}
