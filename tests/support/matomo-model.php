<?php
/**
 * Drives the archive Model of a real, installed Matomo the way core:archive does: boots Matomo
 * (CLI environment, its DI container with every activated plugin's config), takes
 * StaticContainer::get(Piwik\DataAccess\Model::class), and calls its methods on rows fetched as
 * QueueConsumer fetches them. For the paths a short core:archive run rarely reaches (take-over,
 * duplicates, a failed request's release).
 *
 * Usage: php [-d extension=...] matomo-model.php MATOMO_DIR STEPS_JSON
 *   STEPS_JSON: {"config": {"General_2": {"archive_failure_recovery_timeout": 60}},
 *                "steps": [["startArchive", ID], ["deleteInvalidations", [ID, ...]],
 *                          ["releaseInProgressInvalidation", ID], ["releaseInProgressInvalidations", [ID, ...]],
 *                          ["resetFailedArchivingJobs"], ["sql", SQL]]}
 * Prints JSON: {"model": class, "results": [...], "log": [[level, message], ...]}.
 */

declare(strict_types=1);

[, $dir, $json] = $argv;
$input = json_decode($json, true, flags: JSON_THROW_ON_ERROR);
define('PIWIK_DOCUMENT_ROOT', $dir);
define('PIWIK_INCLUDE_PATH', $dir);
define('PIWIK_USER_PATH', $dir);
define('PIWIK_ENABLE_DISPATCH', false);
define('PIWIK_ENABLE_ERROR_HANDLER', false);
define('PIWIK_ENABLE_SESSION_START', false);
require $dir . '/core/bootstrap.php';

use Piwik\Common;
use Piwik\Config;
use Piwik\Container\StaticContainer;
use Piwik\DataAccess\Model;
use Piwik\Db;
use Piwik\Log\LoggerInterface;

$env = new \Piwik\Application\Environment('cli');
$env->init();
\Piwik\Plugin\Manager::getInstance()->loadActivatedPlugins();

// Connect first, so a config override (say, settings the extension refuses) does not stop Matomo's own connection.
Db::get();
foreach ($input['config'] ?? [] as $section => $values) {
    $config = Config::getInstance();
    $config->$section = array_merge($config->$section ?: [], $values);
}

// Collect what the Model logs, on top of Matomo's own handlers.
$records = [];
$logger = StaticContainer::get(LoggerInterface::class);
if ($logger instanceof \Monolog\Logger) {
    $logger->pushHandler(new class ($records) extends \Monolog\Handler\AbstractProcessingHandler {
        public function __construct(private array &$records)
        {
            parent::__construct(\Monolog\Logger::DEBUG);
        }

        protected function write(array $record): void
        {
            $this->records[] = [strtolower($record['level_name']), (string) $record['message']];
        }
    });
}

$model = StaticContainer::get(Model::class);
$table = Common::prefixTable('archive_invalidations');
$row = fn (int $id) => Db::fetchRow("SELECT * FROM `$table` WHERE idinvalidation = ?", [$id]) ?: ['idinvalidation' => $id];
$results = [];
foreach ($input['steps'] as $step) {
    [$method] = $step;
    $results[] = match ($method) {
        'startArchive' => $model->startArchive($row($step[1])),
        'deleteInvalidations' => $model->deleteInvalidations(array_map($row, $step[1])),
        'releaseInProgressInvalidation' => $model->releaseInProgressInvalidation($step[1]),
        'releaseInProgressInvalidations' => $model->releaseInProgressInvalidations($step[1]),
        'resetFailedArchivingJobs' => $model->resetFailedArchivingJobs(),
        // What other processes do meanwhile, through Matomo's connection; a SELECT returns one value.
        'sql' => str_starts_with($step[1], 'SELECT') ? Db::fetchOne($step[1]) : Db::query($step[1])->rowCount(),
    };
}
echo json_encode(['model' => get_class($model), 'pid' => getmypid(), 'results' => $results, 'log' => $records]), "\n";
