<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

/**
 * Issue 11: what a careful user expects at the edges (a registration that failed once, host
 * names the table cannot store, big results, secrets in traces).
 */
final class EdgesTest extends ExtensionTestCase
{
    private ?string $user = null;

    protected function tearDown(): void
    {
        $admin = TestDatabase::admin();
        $admin->exec('SET GLOBAL read_only = 0');
        if ($this->user !== null) {
            $admin->exec("DROP USER IF EXISTS '{$this->user}'@'%'");
        }
        parent::tearDown();
    }

    /** A user without SUPER (read_only binds it), with all rights on the test database. */
    private function plainUser(): array
    {
        $this->user = 'mac_edge_' . bin2hex(random_bytes(3));
        $admin = TestDatabase::admin();
        $admin->exec("CREATE USER '{$this->user}'@'%' IDENTIFIED BY 'pw'");
        $admin->exec("GRANT ALL ON `{$this->config['dbname']}`.* TO '{$this->user}'@'%'");
        return ['username' => $this->user, 'password' => 'pw'] + $this->config;
    }

    public function testAProcessWhoseRegistrationFailedRegistersAgainOnALaterClaim(): void
    {
        [$a, $b, $c] = $this->queue([[], [], []]);
        $admin = TestDatabase::server();
        // In the child: the database goes read-only (the registration and the claim fail), comes
        // back, and later claims must register again: half a lease (1.5 s here) after the failure.
        $code = sprintf(<<<'PHP'
            $config = %s; [$a, $b, $c] = %s; $s = %s;
            $admin = new PDO("mysql:host={$s['host']};port={$s['port']}", $s['user'], $s['password']);
            $registered = function () use ($admin, $config) {
                return (int) $admin->query("SELECT COUNT(*) FROM `{$config['dbname']}`.`matomo_archive_claim_process` WHERE pid = " . getmypid())->fetchColumn();
            };
            Matomo\ArchiveClaim\configure($config);
            Matomo\ArchiveClaim\install_schema();
            $admin->exec('SET GLOBAL read_only = 1');
            try { Matomo\ArchiveClaim\claim_invalidation($a); echo "claimed under read_only\n"; }
            catch (Matomo\ArchiveClaim\Exception $e) { echo "refused\n"; }
            $admin->exec('SET GLOBAL read_only = 0');
            echo Matomo\ArchiveClaim\claim_invalidation($b) ? 'claimed' : 'lost', ' registered=', $registered(), "\n";
            sleep(2);
            echo Matomo\ArchiveClaim\claim_invalidation($c) ? 'claimed' : 'lost', ' registered=', $registered(), "\n";
            PHP, var_export($this->plainUser(), true), var_export([$a, $b, $c], true), var_export($admin, true));
        [$exit, $out, $err] = $this->runPhp($code, ['matomo_archive_claim.heartbeat_interval' => 1,
            'matomo_archive_claim.lease' => 3, 'matomo_archive_claim.auto_reap' => 0]);
        $this->assertSame(0, $exit, $out . $err);
        $this->assertSame("refused\nclaimed registered=0\nclaimed registered=1\n", $out, $err);
    }

    public function testThePasswordIsInNoTraceOfAnExceptionFromConfigure(): void
    {
        // With zend.exception_ignore_args = 0 (PHP's development default) a trace carries every
        // argument: configure()'s [database] array once appeared there, password and all.
        $code = <<<'PHP'
            function connect_like_a_plugin(#[\SensitiveParameter] array $database): void { Matomo\ArchiveClaim\configure($database); }
            $db = ['host' => 'db', 'dbname' => 'matomo', 'username' => 'u', 'password' => 'S3cret-pw', 'enable_ssl' => '1'];
            foreach (['Matomo\ArchiveClaim\configure', 'connect_like_a_plugin'] as $f) {
                try { $f($db); echo "configured\n"; }
                catch (Matomo\ArchiveClaim\ConfigurationException $e) {
                    echo get_class($e->getTrace()[0]['args'][0] ?? null), "\n";
                    echo print_r($e->getTrace(), true), "\n", $e, "\n", var_export($e, true), "\n";
                }
            }
            PHP;
        [$exit, $out, $err] = $this->runPhp($code, ['zend.exception_ignore_args' => 0]);
        $this->assertSame(0, $exit, $out . $err);
        $this->assertSame(2, substr_count($out, "SensitiveParameterValue\n"), $out);
        $this->assertStringContainsString('enable_ssl', $out, 'the exceptions were thrown');
        $this->assertStringNotContainsString('S3cret-pw', $out . $err);
    }
}
